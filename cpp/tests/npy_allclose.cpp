// npy_allclose: compares .npy files pairwise, for the end-to-end tests of torchbridge-run.
//
//   npy_allclose [--rtol R] [--atol A] ACTUAL EXPECTED [ACTUAL EXPECTED ...]
//
// Exit status 0 when every pair has equal shape and dtype and all elements satisfy
// |actual - expected| <= atol + rtol * |expected|; 1 when one differs; 2 on bad usage or files.
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "torchbridge/runtime.hpp"

int main(int argc, char** argv) {
  double rtol = 1e-5, atol = 1e-6;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if ((arg == "--rtol" || arg == "--atol") && i + 1 < argc) {
      (arg == "--rtol" ? rtol : atol) = std::strtod(argv[++i], nullptr);
    } else {
      files.push_back(arg);
    }
  }
  if (files.empty() || files.size() % 2 != 0) {
    std::cerr << "usage: npy_allclose [--rtol R] [--atol A] ACTUAL EXPECTED [ACTUAL EXPECTED ...]\n";
    return 2;
  }
  int status = 0;
  try {
    for (size_t i = 0; i < files.size(); i += 2) {
      const torchbridge::Comparison comparison =
          torchbridge::compare(torchbridge::read_npy(files[i]), torchbridge::read_npy(files[i + 1]), rtol, atol);
      std::cout << (comparison.passed ? "same      " : "DIFFERENT ") << files[i] << " vs " << files[i + 1]
                << ": max abs " << comparison.max_abs << ", max rel " << comparison.max_rel
                << (comparison.note.empty() ? "" : " (" + comparison.note + ")") << "\n";
      if (!comparison.passed) status = 1;
    }
  } catch (const torchbridge::Error& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 2;
  }
  return status;
}
