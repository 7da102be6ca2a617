// check.hpp: the few lines of test harness the C++ tests share; no framework needed.
//
//   TEST(reads_a_numpy_file) {
//     REQUIRE(tensor.dim() == 2);
//     REQUIRE_EQ(tensor.size(0), 3);
//     REQUIRE_ERROR(torchbridge::read_npy("missing.npy"), torchbridge::ErrorCode::kInput, "missing.npy");
//   }
//   int main() { return tbtest::run_all(); }
//
// A failed REQUIRE prints file:line and what it saw, then ends that test; the other tests still run
// and main returns 1. An exception escaping a test fails it too, with its message. (Not named CHECK:
// c10's logging header defines glog-style CHECK macros.)
#pragma once

#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "torchbridge/runtime.hpp"

namespace tbtest {

struct CheckFailed {};

struct TestCase {
  const char* name;
  void (*function)();
};

inline std::vector<TestCase>& registry() {
  static std::vector<TestCase> tests;
  return tests;
}

struct Registrar {
  Registrar(const char* name, void (*function)()) { registry().push_back({name, function}); }
};

[[noreturn]] inline void fail(const char* file, int line, const std::string& what) {
  std::cerr << file << ":" << line << ": " << what << "\n";
  throw CheckFailed{};
}

inline const char* code_name(torchbridge::ErrorCode code) {
  switch (code) {
    case torchbridge::ErrorCode::kInvalidArgument: return "kInvalidArgument";
    case torchbridge::ErrorCode::kArtifact: return "kArtifact";
    case torchbridge::ErrorCode::kInput: return "kInput";
    case torchbridge::ErrorCode::kRuntime: return "kRuntime";
  }
  return "unknown";
}

// Runs the tests named on the command line, or all of them; 0 when every one passed.
inline int run_all(int argc = 0, char** argv = nullptr) {
  int failed = 0, ran = 0;
  for (const TestCase& test : registry()) {
    bool selected = argc <= 1;
    for (int i = 1; i < argc; ++i) selected = selected || std::string(argv[i]) == test.name;
    if (!selected) continue;
    ++ran;
    bool passed = false;
    try {
      test.function();
      passed = true;
    } catch (const CheckFailed&) {
    } catch (const torchbridge::Error& error) {
      std::cerr << "unexpected torchbridge::Error (" << code_name(error.code()) << "): " << error.what() << "\n";
    } catch (const std::exception& error) {
      std::cerr << "unexpected exception: " << error.what() << "\n";
    }
    std::cout << (passed ? "ok     " : "FAILED ") << test.name << std::endl;
    failed += passed ? 0 : 1;
  }
  std::cout << ran - failed << "/" << ran << " tests passed" << std::endl;
  return failed == 0 && ran > 0 ? 0 : 1;
}

// A fresh directory for one test program's files, under the build tree.
inline std::filesystem::path scratch_dir(const std::string& name) {
  const std::filesystem::path dir = std::filesystem::path(TORCHBRIDGE_TEST_TMP) / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

inline std::string data_path(const std::string& name) { return std::string(TORCHBRIDGE_TEST_DATA) + "/" + name; }

inline std::string read_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("test setup: cannot read " + path);
  std::ostringstream buffer;
  buffer << file.rdbuf();
  return buffer.str();
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!file) throw std::runtime_error("test setup: cannot write " + path);
}

}  // namespace tbtest

#define TEST(name)                                               \
  static void name();                                            \
  static const tbtest::Registrar name##_registrar(#name, &name); \
  static void name()

#define REQUIRE(condition)                                                         \
  do {                                                                             \
    if (!(condition)) tbtest::fail(__FILE__, __LINE__, "REQUIRE(" #condition ")"); \
  } while (0)

#define REQUIRE_EQ(actual, expected)                                                               \
  do {                                                                                             \
    const auto& tb_actual_ = (actual);                                                             \
    const auto& tb_expected_ = (expected);                                                         \
    if (!(tb_actual_ == tb_expected_)) {                                                           \
      std::ostringstream tb_message_;                                                              \
      tb_message_ << "REQUIRE_EQ(" #actual ", " #expected "): got " << tb_actual_ << ", expected " \
                  << tb_expected_;                                                                 \
      tbtest::fail(__FILE__, __LINE__, tb_message_.str());                                         \
    }                                                                                              \
  } while (0)

// `statement` must throw torchbridge::Error with `expected_code` and a message containing `text`.
#define REQUIRE_ERROR(statement, expected_code, text)                                                          \
  do {                                                                                                         \
    bool tb_threw_ = false;                                                                                    \
    try {                                                                                                      \
      statement;                                                                                               \
    } catch (const torchbridge::Error& tb_error_) {                                                            \
      tb_threw_ = true;                                                                                        \
      const std::string tb_what_ = tb_error_.what();                                                           \
      if (tb_error_.code() != (expected_code))                                                                 \
        tbtest::fail(__FILE__, __LINE__,                                                                       \
                     std::string(#statement " threw ") + tbtest::code_name(tb_error_.code()) + ", expected " + \
                         tbtest::code_name(expected_code) + ": " + tb_what_);                                  \
      if (tb_what_.find(text) == std::string::npos)                                                            \
        tbtest::fail(__FILE__, __LINE__,                                                                       \
                     std::string(#statement ": message lacks '") + (text) + "': " + tb_what_);                 \
    }                                                                                                          \
    if (!tb_threw_) tbtest::fail(__FILE__, __LINE__, #statement " did not throw torchbridge::Error");          \
  } while (0)
