// The .npy format (NEP 1): magic, version, a Python-literal header dict, then raw data.
#include <torch/torch.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <fstream>
#include <sstream>

#include "internal.hpp"
#include "torchbridge/runtime.hpp"

namespace torchbridge {
namespace {

const char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;

struct DtypeEntry {
  const char* numpy_descr;  // without the byte-order character
  const char* name;
  at::ScalarType dtype;
};

constexpr DtypeEntry kDtypes[] = {
    {"f2", "float16", at::kHalf},  {"f4", "float32", at::kFloat}, {"f8", "float64", at::kDouble},
    {"i1", "int8", at::kChar},     {"i2", "int16", at::kShort},   {"i4", "int32", at::kInt},
    {"i8", "int64", at::kLong},    {"u1", "uint8", at::kByte},    {"b1", "bool", at::kBool},
};

[[noreturn]] void bad_npy(const std::string& what, const std::string& why) {
  throw Error(ErrorCode::kInput, what + ": not a valid .npy file: " + why);
}

std::string supported_list() {
  std::string out;
  for (const auto& entry : kDtypes) out += std::string(out.empty() ? "" : ", ") + entry.name;
  return out;
}

// The header is the repr() of a dict with exactly the keys 'descr', 'fortran_order' and 'shape',
// padded with spaces and ended by '\n'. Read as that grammar, not searched for substrings, so a
// damaged header is refused instead of half-understood.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& what) : text_(text), what_(what) {}

  void parse(std::string& descr, bool& fortran_order, std::vector<int64_t>& shape) {
    bool seen_descr = false, seen_order = false, seen_shape = false;
    skip_space();
    expect('{');
    while (true) {
      skip_space();
      if (peek() == '}') break;
      const std::string key = quoted();
      skip_space();
      expect(':');
      skip_space();
      if (key == "descr" && !seen_descr) {
        descr = quoted();
        seen_descr = true;
      } else if (key == "fortran_order" && !seen_order) {
        fortran_order = boolean();
        seen_order = true;
      } else if (key == "shape" && !seen_shape) {
        shape = tuple();
        seen_shape = true;
      } else {
        bad_npy(what_, "unexpected or repeated header key '" + key.substr(0, 40) + "'");
      }
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      skip_space();
      if (peek() != '}') bad_npy(what_, "malformed header (expected ',' or '}')");
    }
    ++pos_;
    if (!seen_descr || !seen_order || !seen_shape)
      bad_npy(what_, std::string("header lacks '") + (!seen_descr ? "descr" : !seen_order ? "fortran_order" : "shape") +
                         "'");
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\0')) ++pos_;
    if (pos_ < text_.size() && text_[pos_] == '\n') ++pos_;
    if (pos_ != text_.size()) bad_npy(what_, "unexpected bytes after the header dict");
  }

 private:
  const std::string& text_;
  const std::string& what_;
  size_t pos_ = 0;

  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n')) ++pos_;
  }
  void expect(char c) {
    if (peek() != c) bad_npy(what_, std::string("malformed header (expected '") + c + "')");
    ++pos_;
  }
  std::string quoted() {
    const char quote = peek();
    if (quote != '\'' && quote != '"') bad_npy(what_, "malformed header (expected a quoted string)");
    const size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string::npos || end - pos_ > 64) bad_npy(what_, "malformed header (unterminated string)");
    std::string out = text_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return out;
  }
  bool boolean() {
    if (text_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (text_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    bad_npy(what_, "fortran_order must be True or False");
  }
  std::vector<int64_t> tuple() {
    std::vector<int64_t> shape;
    expect('(');
    while (true) {
      skip_space();
      if (peek() == ')') break;
      const size_t start = pos_;
      int64_t value = 0;
      while (peek() >= '0' && peek() <= '9') {
        if (value > (std::numeric_limits<int64_t>::max() - 9) / 10) bad_npy(what_, "shape dimension too large");
        value = value * 10 + (text_[pos_++] - '0');
      }
      if (pos_ == start) bad_npy(what_, "bad shape (expected non-negative integers)");
      if (shape.size() == 64) bad_npy(what_, "more than 64 dimensions");
      shape.push_back(value);
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() != ')') bad_npy(what_, "bad shape (expected ',' or ')')");
    }
    ++pos_;
    return shape;
  }
};

struct NpyHeader {
  const DtypeEntry* entry = nullptr;
  std::vector<int64_t> shape;
  bool fortran_order = false;
  size_t data_offset = 0;
  uint64_t nbytes = 0;
};

// The prelude's length field: how many bytes the magic, version, length and header take.
size_t header_end(const std::string& prelude, const std::string& what) {
  if (prelude.size() < kMagicSize + 4 || std::memcmp(prelude.data(), kMagic, kMagicSize) != 0)
    bad_npy(what, "missing the \\x93NUMPY magic (expected a file written by numpy.save)");
  const auto major = static_cast<unsigned char>(prelude[6]);
  if (major == 1)
    return 10 + (static_cast<unsigned char>(prelude[8]) | (static_cast<unsigned char>(prelude[9]) << 8));
  if (major == 2 || major == 3) {
    if (prelude.size() < 12) bad_npy(what, "truncated header");
    size_t length = 0;
    for (int i = 0; i < 4; ++i) length |= static_cast<size_t>(static_cast<unsigned char>(prelude[8 + i])) << (8 * i);
    if (length > (1u << 20)) bad_npy(what, "header longer than 1 MiB");
    return 12 + length;
  }
  bad_npy(what, "unknown format version " + std::to_string(major) + " (expected 1, 2 or 3)");
}

// Checks the header in bytes [0, header_end) against a file of `file_size` bytes: the data must
// fill the rest of the file exactly.
NpyHeader parse_header(const std::string& bytes, size_t end, uint64_t file_size, const std::string& what) {
  if (bytes.size() < end) bad_npy(what, "truncated header");
  const size_t offset = static_cast<unsigned char>(bytes[6]) == 1 ? 10 : 12;
  NpyHeader header;
  header.data_offset = end;
  std::string descr;
  HeaderParser(bytes.substr(offset, end - offset), what).parse(descr, header.fortran_order, header.shape);
  if (descr.size() < 2) bad_npy(what, "bad descr '" + descr + "'");
  const char order = descr[0];
  const std::string kind = descr.substr(1);
  if (order != '<' && order != '>' && order != '|' && order != '=')
    throw Error(ErrorCode::kInput, what + ": unsupported .npy dtype '" + descr + "' (supported: " + supported_list() + ")");
  for (const auto& candidate : kDtypes)
    if (kind == candidate.numpy_descr) header.entry = &candidate;
  if (header.entry == nullptr)
    throw Error(ErrorCode::kInput, what + ": unsupported .npy dtype '" + descr + "' (supported: " + supported_list() + ")");
  if (order == '>' && c10::elementSize(header.entry->dtype) > 1)
    throw Error(ErrorCode::kInput, what + ": big-endian data ('" + descr + "') is not supported; save it little-endian");
  uint64_t nbytes = c10::elementSize(header.entry->dtype);
  for (int64_t dim : header.shape)
    if (__builtin_mul_overflow(nbytes, static_cast<uint64_t>(dim), &nbytes) || nbytes > file_size)
      nbytes = std::numeric_limits<uint64_t>::max();
  const uint64_t held = file_size - end;
  if (nbytes == std::numeric_limits<uint64_t>::max() || held < nbytes)
    bad_npy(what, "truncated data: the header's shape needs " +
                      (nbytes == std::numeric_limits<uint64_t>::max() ? std::string("more bytes than the file has")
                                                                      : std::to_string(nbytes) + " bytes") +
                      ", the file holds " + std::to_string(held));
  if (held > nbytes)
    bad_npy(what, std::to_string(held - nbytes) + " unexpected bytes after the data (the header's shape needs " +
                      std::to_string(nbytes) + ")");
  // An empty array (a 0 in its shape) holds no bytes whatever its other dimensions: refuse those
  // that numpy could not have written (their product past 2^63 bytes), whose strides overflow
  // LibTorch's (c10::Error "Stride calculation overflowed" escaped parse_npy; cpp/fuzz/fuzz_npy).
  uint64_t extent = c10::elementSize(header.entry->dtype);
  for (int64_t dim : header.shape)
    if (dim > 0 && (__builtin_mul_overflow(extent, static_cast<uint64_t>(dim), &extent) ||
                    extent > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())))
      bad_npy(what, "empty array whose other dimensions multiply past 2^63 bytes");
  header.nbytes = nbytes;
  return header;
}

at::Tensor tensor_from(const NpyHeader& header, const std::function<void(void*, size_t)>& fill) {
  std::vector<int64_t> storage_shape = header.shape;
  if (header.fortran_order) std::reverse(storage_shape.begin(), storage_shape.end());
  at::Tensor tensor = torch::empty(storage_shape, torch::TensorOptions().dtype(header.entry->dtype));
  if (header.nbytes > 0) fill(tensor.data_ptr(), header.nbytes);
  if (header.entry->dtype == at::kBool) {
    // Any byte but 0 or 1 is not a bool numpy wrote; as a C++ bool it is undefined behaviour.
    const auto* data = static_cast<const unsigned char*>(tensor.data_ptr());
    for (uint64_t i = 0; i < header.nbytes; ++i)
      if (data[i] > 1) throw Error(ErrorCode::kInput, "bool data holds a byte other than 0 or 1");
  }
  if (header.fortran_order && header.shape.size() > 1) {
    std::vector<int64_t> reversed(header.shape.size());
    for (size_t i = 0; i < header.shape.size(); ++i) reversed[i] = static_cast<int64_t>(header.shape.size() - 1 - i);
    tensor = tensor.permute(reversed).contiguous();
  }
  return tensor;
}

}  // namespace

std::string dtype_name(at::ScalarType dtype) {
  for (const auto& entry : kDtypes)
    if (entry.dtype == dtype) return entry.name;
  if (dtype == at::kBFloat16) return "bfloat16";
  if (dtype == at::kQUInt8) return "quint8";
  if (dtype == at::kQInt8) return "qint8";
  throw Error(ErrorCode::kInvalidArgument,
              std::string("unsupported dtype ") + c10::toString(dtype) + " (supported: " + supported_list() + ")");
}

at::ScalarType dtype_from_name(const std::string& name) {
  for (const auto& entry : kDtypes)
    if (name == entry.name) return entry.dtype;
  if (name == "bfloat16") return at::kBFloat16;
  throw Error(ErrorCode::kInvalidArgument, "unknown dtype '" + name + "' (expected one of: " + supported_list() + ", bfloat16)");
}

at::Tensor parse_npy(const std::string& bytes, const std::string& what) {
  const NpyHeader header = parse_header(bytes, header_end(bytes, what), bytes.size(), what);
  try {
    return tensor_from(header, [&](void* out, size_t size) { std::memcpy(out, bytes.data() + header.data_offset, size); });
  } catch (const Error& error) {
    bad_npy(what, error.what());
  }
}

at::Tensor read_npy(const std::string& path) {
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) throw Error(ErrorCode::kInput, path + ": cannot open file (expected a .npy file)");
  const std::streamoff size = file.tellg();
  if (size < 0) throw Error(ErrorCode::kInput, path + ": cannot read file (expected a .npy file)");
  // The header first: its shape is checked against the file's size before any data is read.
  auto read = [&](size_t from, size_t count) {
    std::string bytes(count, '\0');
    file.seekg(static_cast<std::streamoff>(from));
    file.read(bytes.data(), static_cast<std::streamsize>(count));
    bytes.resize(static_cast<size_t>(file.gcount()));
    return bytes;
  };
  std::string prelude = read(0, std::min<size_t>(static_cast<size_t>(size), 12));
  const size_t end = header_end(prelude, path);
  if (static_cast<uint64_t>(size) < end) bad_npy(path, "truncated header");
  const NpyHeader header = parse_header(read(0, end), end, static_cast<uint64_t>(size), path);
  try {
    return tensor_from(header, [&](void* out, size_t count) {
      file.clear();
      file.seekg(static_cast<std::streamoff>(header.data_offset));
      file.read(static_cast<char*>(out), static_cast<std::streamsize>(count));
      if (static_cast<size_t>(file.gcount()) != count) bad_npy(path, "the file shrank while it was read");
    });
  } catch (const Error& error) {
    if (std::string(error.what()).rfind(path, 0) == 0) throw;
    bad_npy(path, error.what());
  }
}

std::string to_npy_bytes(const at::Tensor& input) {
  at::Tensor tensor = input.detach().to(at::kCPU).contiguous();
  if (tensor.is_quantized()) tensor = tensor.dequantize();
  const DtypeEntry* entry = nullptr;
  for (const auto& candidate : kDtypes)
    if (candidate.dtype == tensor.scalar_type()) entry = &candidate;
  if (entry == nullptr)
    throw Error(ErrorCode::kInvalidArgument, std::string("cannot write dtype ") + c10::toString(tensor.scalar_type()) +
                                                 " to .npy (supported: " + supported_list() + ")");
  const char byte_order = (entry->dtype == at::kByte || entry->dtype == at::kChar || entry->dtype == at::kBool) ? '|' : '<';
  std::string shape = "(";
  for (int64_t dim : tensor.sizes()) shape += std::to_string(dim) + ", ";
  if (tensor.dim() > 1) shape.resize(shape.size() - 2);
  else if (tensor.dim() == 1) shape.resize(shape.size() - 1);
  shape += ")";
  std::string header = std::string("{'descr': '") + byte_order + entry->numpy_descr +
                       "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Pad so that magic + version + length + header is a multiple of 64, ending with '\n'.
  const size_t unpadded = kMagicSize + 2 + 2 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::string out(kMagic, kMagicSize);
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(header.size() & 0xFF);
  out += static_cast<char>((header.size() >> 8) & 0xFF);
  out += header;
  out.append(static_cast<const char*>(tensor.data_ptr()), tensor.nbytes());
  return out;
}

void write_npy(const std::string& path, const at::Tensor& tensor) {
  const std::string bytes = to_npy_bytes(tensor);
  const std::string temporary = path + ".tmp-torchbridge";
  {
    std::ofstream file(temporary, std::ios::binary | std::ios::trunc);
    if (!file) throw Error(ErrorCode::kInvalidArgument, path + ": cannot open for writing");
    file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!file) {
      std::remove(temporary.c_str());
      throw Error(ErrorCode::kInvalidArgument, path + ": write failed (disk full?)");
    }
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    std::remove(temporary.c_str());
    throw Error(ErrorCode::kInvalidArgument, path + ": cannot move the written file into place");
  }
}

}  // namespace torchbridge
