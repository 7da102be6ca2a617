// .npy reading and writing: every supported dtype round-trips bit for bit, files numpy wrote read
// back, Fortran order is honoured, and every malformed file fails with Error(kInput).
#include <ATen/ATen.h>

#include <cstring>
#include <limits>

#include "check.hpp"
#include "internal.hpp"

using torchbridge::ErrorCode;

namespace {

const std::filesystem::path kScratch = tbtest::scratch_dir("npy");

// A .npy file by hand: magic, version, little-endian header length, space-padded header, data.
std::string make_npy(const std::string& header_dict, const std::string& data, int major = 1) {
  std::string header = header_dict;
  const size_t prefix = major == 1 ? 10 : 12;
  header.append((64 - (prefix + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  const size_t length_bytes = major == 1 ? 2 : 4;
  for (size_t i = 0; i < length_bytes; ++i) out += static_cast<char>((header.size() >> (8 * i)) & 0xFF);
  return out + header + data;
}

std::string raw_bytes(const at::Tensor& tensor) {
  const at::Tensor contiguous = tensor.contiguous();
  return std::string(static_cast<const char*>(contiguous.data_ptr()), contiguous.nbytes());
}

bool same_bits(const at::Tensor& actual, const at::Tensor& expected) {
  return actual.scalar_type() == expected.scalar_type() && actual.sizes() == expected.sizes() &&
         raw_bytes(actual) == raw_bytes(expected);
}

// Values that exercise each dtype's range: extremes, negatives, and NaN/Inf for floats.
at::Tensor sample(at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf:
    case at::kFloat:
    case at::kDouble: {
      const double inf = std::numeric_limits<double>::infinity();
      const at::Tensor values = at::tensor({-1.5, 0.0, 3.25, 1e-3, inf, -inf, std::nan(""), 65504.0}, at::kDouble);
      return values.to(dtype).reshape({2, 4});
    }
    case at::kChar: return at::tensor({-128, -1, 0, 1, 2, 127}, at::kChar).reshape({3, 2});
    case at::kShort: return at::tensor({-32768, -1, 0, 7, 300, 32767}, at::kShort).reshape({2, 3});
    case at::kInt:
      return at::tensor({std::numeric_limits<int32_t>::min(), -1, 0, std::numeric_limits<int32_t>::max()}, at::kInt);
    case at::kLong:
      return at::tensor({std::numeric_limits<int64_t>::min(), int64_t{-1}, int64_t{0},
                         std::numeric_limits<int64_t>::max()},
                        at::kLong)
          .reshape({2, 1, 2});
    case at::kByte: return at::tensor({0, 1, 128, 255}, at::kByte).reshape({4, 1});
    case at::kBool: return at::tensor({1, 0, 0, 1, 1}, at::kByte).to(at::kBool);
    default: throw std::runtime_error("no sample for this dtype");
  }
}

}  // namespace

TEST(every_supported_dtype_round_trips_bit_for_bit) {
  const std::vector<std::pair<at::ScalarType, std::string>> dtypes = {
      {at::kHalf, "'<f2'"}, {at::kFloat, "'<f4'"}, {at::kDouble, "'<f8'"}, {at::kChar, "'|i1'"},  {at::kShort, "'<i2'"},
      {at::kInt, "'<i4'"},  {at::kLong, "'<i8'"},  {at::kByte, "'|u1'"},   {at::kBool, "'|b1'"},
  };
  for (const auto& [dtype, descr] : dtypes) {
    const at::Tensor original = sample(dtype);
    const std::string bytes = torchbridge::to_npy_bytes(original);
    REQUIRE(bytes.find(descr) != std::string::npos);
    REQUIRE_EQ((bytes.size() - original.nbytes()) % 64, 0u);  // numpy aligns the data to 64 bytes
    REQUIRE(same_bits(torchbridge::parse_npy(bytes, "memory"), original));

    const std::string path = (kScratch / (torchbridge::dtype_name(dtype) + ".npy")).string();
    torchbridge::write_npy(path, original);
    REQUIRE(same_bits(torchbridge::read_npy(path), original));
  }
}

TEST(scalars_and_empty_tensors_round_trip) {
  const at::Tensor scalar = at::scalar_tensor(2.5, at::kFloat);
  const at::Tensor read_scalar = torchbridge::parse_npy(torchbridge::to_npy_bytes(scalar), "scalar");
  REQUIRE_EQ(read_scalar.dim(), 0);
  REQUIRE_EQ(read_scalar.item<float>(), 2.5f);

  const at::Tensor empty = at::empty({0, 3}, at::kLong);
  const at::Tensor read_empty = torchbridge::parse_npy(torchbridge::to_npy_bytes(empty), "empty");
  REQUIRE(read_empty.sizes() == empty.sizes());
  REQUIRE(read_empty.scalar_type() == at::kLong);

  const at::Tensor vector = at::arange(5, at::kInt);
  const std::string bytes = torchbridge::to_npy_bytes(vector);
  REQUIRE(bytes.find("'shape': (5,)") != std::string::npos);  // numpy's spelling of a 1-tuple
  REQUIRE(same_bits(torchbridge::parse_npy(bytes, "vector"), vector));
}

TEST(writes_views_as_their_values) {
  const at::Tensor matrix = at::arange(6, at::kFloat).reshape({2, 3});
  const at::Tensor transposed = matrix.t();  // a non-contiguous view
  const at::Tensor read = torchbridge::parse_npy(torchbridge::to_npy_bytes(transposed), "view");
  REQUIRE(read.sizes() == transposed.sizes());
  REQUIRE(at::equal(read, transposed));
}

TEST(write_replaces_an_existing_file) {
  const std::string path = (kScratch / "replaced.npy").string();
  tbtest::write_file(path, "old contents");
  torchbridge::write_npy(path, at::ones({2}, at::kFloat));
  REQUIRE(at::equal(torchbridge::read_npy(path), at::ones({2}, at::kFloat)));
  REQUIRE(!std::filesystem::exists(path + ".tmp-torchbridge"));
}

TEST(reads_files_numpy_wrote) {
  const at::Tensor x = torchbridge::read_npy(tbtest::data_path("tiny_mlp_input.npy"));
  REQUIRE(x.scalar_type() == at::kFloat);
  REQUIRE(x.sizes() == at::IntArrayRef({3, 4}));
  REQUIRE(at::isfinite(x).all().item<bool>());

  const at::Tensor index = torchbridge::read_npy(tbtest::data_path("two_io_input_1.npy"));
  REQUIRE(index.scalar_type() == at::kLong);
  REQUIRE(at::equal(index, at::tensor({0, 4, 2}, at::kLong)));
}

TEST(fortran_order_is_transposed_into_place) {
  const at::Tensor expected = at::arange(6, at::kFloat).reshape({2, 3});
  // Column-major storage of [[0, 1, 2], [3, 4, 5]] is 0 3 1 4 2 5.
  const std::string bytes = make_npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
                                     raw_bytes(at::tensor({0.f, 3.f, 1.f, 4.f, 2.f, 5.f})));
  const at::Tensor read = torchbridge::parse_npy(bytes, "fortran 2-d");
  REQUIRE(read.sizes() == expected.sizes());
  REQUIRE(read.is_contiguous());
  REQUIRE(at::equal(read, expected));

  const at::Tensor cube = at::arange(24, at::kLong).reshape({2, 3, 4});
  const std::string cube_bytes = make_npy("{'descr': '<i8', 'fortran_order': True, 'shape': (2, 3, 4), }",
                                          raw_bytes(cube.permute({2, 1, 0})));
  REQUIRE(at::equal(torchbridge::parse_npy(cube_bytes, "fortran 3-d"), cube));
}

TEST(reads_format_version_2_headers) {
  const std::string bytes =
      make_npy("{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }", raw_bytes(at::tensor({7, 8, 9})), 2);
  REQUIRE(at::equal(torchbridge::parse_npy(bytes, "version 2"), at::tensor({7, 8, 9})));
}

TEST(missing_file_is_an_input_error_naming_the_path) {
  const std::string path = (kScratch / "no_such_file.npy").string();
  REQUIRE_ERROR(torchbridge::read_npy(path), ErrorCode::kInput, path);
}

TEST(wrong_magic_is_an_input_error) {
  const std::string path = (kScratch / "not_numpy.npy").string();
  tbtest::write_file(path, "x,y\n1,2\n3,4\n");
  REQUIRE_ERROR(torchbridge::read_npy(path), ErrorCode::kInput, "magic");
  REQUIRE_ERROR(torchbridge::read_npy(path), ErrorCode::kInput, path);
  tbtest::write_file(path, "");
  REQUIRE_ERROR(torchbridge::read_npy(path), ErrorCode::kInput, "magic");
  // An artifact is a zip, not a .npy.
  REQUIRE_ERROR(torchbridge::read_npy(tbtest::data_path("tiny_mlp.pt")), ErrorCode::kInput, "magic");
}

TEST(truncated_file_is_an_input_error) {
  REQUIRE_ERROR(torchbridge::read_npy(tbtest::data_path("tiny_mlp_input_truncated.npy")), ErrorCode::kInput,
              "truncated data: the header's shape needs 48 bytes, the file holds 38");

  const std::string whole = torchbridge::to_npy_bytes(at::ones({4}, at::kDouble));
  REQUIRE_ERROR(torchbridge::parse_npy(whole.substr(0, 30), "cut in header"), ErrorCode::kInput, "truncated header");
  REQUIRE_ERROR(torchbridge::parse_npy(whole.substr(0, whole.size() - 1), "cut in data"), ErrorCode::kInput,
              "truncated data");
}

TEST(unsupported_dtype_is_an_input_error_listing_the_supported_ones) {
  auto one_element = [](const std::string& descr, size_t bytes) {
    return make_npy("{'descr': '" + descr + "', 'fortran_order': False, 'shape': (1,), }", std::string(bytes, '\0'));
  };
  const std::string complex64 = one_element("<c8", 8);
  REQUIRE_ERROR(torchbridge::parse_npy(complex64, "complex.npy"), ErrorCode::kInput, "unsupported .npy dtype '<c8'");
  REQUIRE_ERROR(torchbridge::parse_npy(complex64, "complex.npy"), ErrorCode::kInput, "float16, float32");

  const std::string strings = one_element("<U3", 12);
  REQUIRE_ERROR(torchbridge::parse_npy(strings, "strings.npy"), ErrorCode::kInput, "unsupported");

  const std::string big_endian = one_element(">f4", 4);
  REQUIRE_ERROR(torchbridge::parse_npy(big_endian, "big.npy"), ErrorCode::kInput, "big-endian");
}

TEST(malformed_headers_are_input_errors) {
  const std::string no_descr = make_npy("{'fortran_order': False, 'shape': (1,), }", std::string(4, '\0'));
  REQUIRE_ERROR(torchbridge::parse_npy(no_descr, "h.npy"), ErrorCode::kInput, "header lacks 'descr'");
  const std::string bad_shape = make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -1), }", "");
  REQUIRE_ERROR(torchbridge::parse_npy(bad_shape, "h.npy"), ErrorCode::kInput, "bad shape");
  std::string bad_version = torchbridge::to_npy_bytes(at::ones({1}));
  bad_version[6] = 9;
  REQUIRE_ERROR(torchbridge::parse_npy(bad_version, "h.npy"), ErrorCode::kInput, "unknown format version 9");
}

// The header is read as the dict numpy writes, not searched: damage is refused, not half-read.
TEST(damaged_headers_and_data_are_refused_not_misread) {
  const std::string data(16, '\0');
  auto with = [&](const std::string& dict, const std::string& payload) { return make_npy(dict, payload); };
  for (const std::string order : {"'True'", "Truee", "NotTrue", "1", "true"}) {
    const std::string file = with("{'descr': '<f4', 'fortran_order': " + order + ", 'shape': (2, 2), }", data);
    REQUIRE_ERROR(torchbridge::parse_npy(file, "h.npy"), ErrorCode::kInput, "h.npy: not a valid .npy file");
  }
  // Fortran order spelled right still transposes.
  const std::string fortran = with("{'descr': '<i4', 'fortran_order': True, 'shape': (2, 2), }",
                                   raw_bytes(at::tensor({1, 2, 3, 4}, at::kInt)));
  REQUIRE(torchbridge::parse_npy(fortran, "f.npy").equal(at::tensor({1, 3, 2, 4}, at::kInt).reshape({2, 2})));
  // Bytes after the data, or inside the header.
  const std::string good = with("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", data);
  REQUIRE(torchbridge::parse_npy(good, "good.npy").numel() == 4);
  REQUIRE_ERROR(torchbridge::parse_npy(good + "xx", "t.npy"), ErrorCode::kInput, "2 unexpected bytes after the data");
  REQUIRE_ERROR(torchbridge::parse_npy(with("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), } x", data), "h.npy"),
                ErrorCode::kInput, "unexpected bytes after the header dict");
  REQUIRE_ERROR(torchbridge::parse_npy(with("{'descr': '<f4', 'shape': (4,), 'fortran_order': False, 'extra': 1}", data), "h.npy"),
                ErrorCode::kInput, "unexpected or repeated header key 'extra'");
  REQUIRE_ERROR(torchbridge::parse_npy(with("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (4,)}", data), "h.npy"),
                ErrorCode::kInput, "repeated");
  // Shapes whose byte count overflows, or exceeds the file, are refused before any allocation.
  for (const std::string shape : {"(4294967296, 4294967296)", "(9223372036854775807,)", "(99999999999999999999,)",
                                  "(1099511627776,)"}) {
    const std::string file = with("{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }", data);
    REQUIRE_ERROR(torchbridge::parse_npy(file, "big.npy"), ErrorCode::kInput, "big.npy: not a valid .npy file");
  }
  // An empty array with dimensions whose strides overflow (LibTorch's
  // c10::Error escaped); an empty array with large but sane dimensions still reads.
  for (const std::string shape : {"(0, 576460752303423488, 576460752303423488)", "(16, 0, 576460752303423488)"}) {
    const std::string file = with("{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }", "");
    REQUIRE_ERROR(torchbridge::parse_npy(file, "empty.npy"), ErrorCode::kInput, "multiply past 2^63 bytes");
  }
  REQUIRE(torchbridge::parse_npy(with("{'descr': '<f4', 'fortran_order': True, 'shape': (0, 1048576, 1048576), }", ""),
                                 "empty.npy").sizes() == at::IntArrayRef({0, 1048576, 1048576}));
  // A bool byte other than 0 or 1.
  REQUIRE_ERROR(torchbridge::parse_npy(with("{'descr': '|b1', 'fortran_order': False, 'shape': (2,), }", std::string("\x01\x02", 2)), "b.npy"),
                ErrorCode::kInput, "other than 0 or 1");
  // Version 2 and 3 headers (4-byte length) read like version 1.
  REQUIRE(torchbridge::parse_npy(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", data, 2), "v2.npy").numel() == 4);
  REQUIRE(torchbridge::parse_npy(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", data, 3), "v3.npy").numel() == 4);
  // The file reader checks the size before reading the data.
  const std::string path = (kScratch / "trailing.npy").string();
  tbtest::write_file(path, good + "x");
  REQUIRE_ERROR(torchbridge::read_npy(path), ErrorCode::kInput, "1 unexpected bytes after the data");
  tbtest::write_file(path, good);
  REQUIRE(torchbridge::read_npy(path).numel() == 4);
}

TEST(writing_a_dtype_numpy_lacks_is_refused) {
  REQUIRE_ERROR(torchbridge::to_npy_bytes(at::ones({2}, at::kBFloat16)), ErrorCode::kInvalidArgument, "BFloat16");
  const std::string path = (kScratch / "bfloat16.npy").string();
  REQUIRE_ERROR(torchbridge::write_npy(path, at::ones({2}, at::kBFloat16)), ErrorCode::kInvalidArgument, "to .npy");
  REQUIRE(!std::filesystem::exists(path));
}

TEST(dtype_names_match_numpy) {
  for (at::ScalarType dtype : {at::kHalf, at::kFloat, at::kDouble, at::kChar, at::kShort, at::kInt, at::kLong,
                               at::kByte, at::kBool, at::kBFloat16})
    REQUIRE(torchbridge::dtype_from_name(torchbridge::dtype_name(dtype)) == dtype);
  REQUIRE_EQ(torchbridge::dtype_name(at::kFloat), std::string("float32"));
  REQUIRE_EQ(torchbridge::dtype_name(at::kChar), std::string("int8"));
  REQUIRE_ERROR(torchbridge::dtype_from_name("complex64"), ErrorCode::kInvalidArgument, "unknown dtype 'complex64'");
}

int main(int argc, char** argv) { return tbtest::run_all(argc, argv); }
