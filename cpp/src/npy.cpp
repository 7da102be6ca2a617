// The .npy format (NEP 1): magic, version, a Python-literal header dict, then raw data.
#include <torch/torch.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

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

// Extracts the value text following 'key': in the header dict.
std::string header_field(const std::string& header, const std::string& key, const std::string& what) {
  const std::string quoted = "'" + key + "'";
  size_t at = header.find(quoted);
  if (at == std::string::npos) bad_npy(what, "header lacks '" + key + "'");
  at = header.find(':', at + quoted.size());
  if (at == std::string::npos) bad_npy(what, "malformed header");
  ++at;
  while (at < header.size() && header[at] == ' ') ++at;
  size_t end = at;
  if (at < header.size() && header[at] == '(') {
    end = header.find(')', at);
    if (end == std::string::npos) bad_npy(what, "malformed shape");
    return header.substr(at, end - at + 1);
  }
  if (at < header.size() && header[at] == '\'') {
    end = header.find('\'', at + 1);
    if (end == std::string::npos) bad_npy(what, "malformed descr");
    return header.substr(at + 1, end - at - 1);
  }
  while (end < header.size() && header[end] != ',' && header[end] != '}') ++end;
  return header.substr(at, end - at);
}

std::vector<int64_t> parse_shape(const std::string& text, const std::string& what) {
  std::vector<int64_t> shape;
  std::string inner = text.substr(1, text.size() - 2);
  std::stringstream stream(inner);
  std::string item;
  while (std::getline(stream, item, ',')) {
    size_t first = item.find_first_not_of(' ');
    if (first == std::string::npos) continue;
    item = item.substr(first, item.find_last_not_of(' ') - first + 1);
    char* end = nullptr;
    long long value = std::strtoll(item.c_str(), &end, 10);
    if (end == item.c_str() || *end != '\0' || value < 0) bad_npy(what, "bad shape " + text);
    shape.push_back(value);
  }
  return shape;
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
  if (bytes.size() < kMagicSize + 4 || std::memcmp(bytes.data(), kMagic, kMagicSize) != 0)
    bad_npy(what, "missing the \\x93NUMPY magic (expected a file written by numpy.save)");
  const auto major = static_cast<unsigned char>(bytes[6]);
  size_t header_len = 0;
  size_t offset = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) bad_npy(what, "truncated header");
    for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    offset = 12;
  } else {
    bad_npy(what, "unknown format version " + std::to_string(major));
  }
  if (bytes.size() < offset + header_len) bad_npy(what, "truncated header");
  const std::string header = bytes.substr(offset, header_len);
  offset += header_len;

  const std::string descr = header_field(header, "descr", what);
  const std::string fortran = header_field(header, "fortran_order", what);
  const std::vector<int64_t> shape = parse_shape(header_field(header, "shape", what), what);
  if (descr.size() < 2) bad_npy(what, "bad descr '" + descr + "'");
  const char order = descr[0];
  if (order == '>' && descr.substr(1) != "i1" && descr.substr(1) != "u1" && descr.substr(1) != "b1")
    throw Error(ErrorCode::kInput, what + ": big-endian data ('" + descr + "') is not supported; save it little-endian");
  const DtypeEntry* entry = nullptr;
  for (const auto& candidate : kDtypes)
    if (descr.substr(1) == candidate.numpy_descr) entry = &candidate;
  if (entry == nullptr)
    throw Error(ErrorCode::kInput, what + ": unsupported .npy dtype '" + descr + "' (supported: " + supported_list() + ")");

  int64_t numel = 1;
  for (int64_t dim : shape) numel *= dim;
  const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(entry->dtype);
  if (bytes.size() - offset < nbytes)
    bad_npy(what, "truncated data: header promises " + std::to_string(nbytes) + " bytes, file holds " +
                      std::to_string(bytes.size() - offset));

  const bool fortran_order = fortran.find("True") != std::string::npos;
  std::vector<int64_t> storage_shape = shape;
  if (fortran_order) std::reverse(storage_shape.begin(), storage_shape.end());
  at::Tensor tensor = torch::empty(storage_shape, torch::TensorOptions().dtype(entry->dtype));
  if (nbytes > 0) std::memcpy(tensor.data_ptr(), bytes.data() + offset, nbytes);
  if (fortran_order && shape.size() > 1) {
    std::vector<int64_t> reversed(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) reversed[i] = static_cast<int64_t>(shape.size() - 1 - i);
    tensor = tensor.permute(reversed).contiguous();
  }
  return tensor;
}

at::Tensor read_npy(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Error(ErrorCode::kInput, path + ": cannot open file (expected a .npy file)");
  std::stringstream buffer;
  buffer << file.rdbuf();
  return parse_npy(buffer.str(), path);
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
