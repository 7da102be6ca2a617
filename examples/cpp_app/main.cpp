// app: load a torchbridge artifact, run it on .npy inputs (or on the golden example stored in the
// artifact), and print every output in full.
//
//   app MODEL [INPUT.npy ...]
//
// Output, one block per model output, floats with 6 decimals, one row (last dimension) per line:
//
//   output 0: float32[2, 3]
//   0.123456 -1.000000 2.500000
//   0.000000 3.141593 -0.250000
//
// which Python reproduces with " ".join(f"{v:.6f}" for v in row) over y.reshape(-1, y.shape[-1]).
#include <torchbridge/runtime.hpp>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

namespace {

void print_output(size_t index, const at::Tensor& output) {
  const at::Tensor values = output.detach().to(at::kCPU).contiguous();
  std::printf("output %zu: %s[", index, torchbridge::dtype_name(values.scalar_type()).c_str());
  for (int64_t d = 0; d < values.dim(); ++d)
    std::printf("%s%lld", d ? ", " : "", static_cast<long long>(values.size(d)));
  std::printf("]\n");
  if (values.numel() == 0) return;
  const int64_t row_length = values.dim() == 0 ? 1 : values.size(-1);
  const at::Tensor rows = values.reshape({-1, row_length});
  const bool floating = values.is_floating_point();
  const at::Tensor numbers = floating ? rows.to(at::kDouble) : rows.to(at::kLong);
  for (int64_t r = 0; r < numbers.size(0); ++r) {
    for (int64_t c = 0; c < row_length; ++c) {
      if (c) std::printf(" ");
      if (floating) {
        std::printf("%.6f", numbers.data_ptr<double>()[r * row_length + c]);
      } else {
        std::printf("%lld", static_cast<long long>(numbers.data_ptr<int64_t>()[r * row_length + c]));
      }
    }
    std::printf("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help") {
    std::cerr << "usage: app MODEL [INPUT.npy ...]   (no inputs: the golden example stored in MODEL)\n";
    return 2;
  }
  try {
    const torchbridge::Runtime runtime(argv[1]);
    std::vector<at::Tensor> inputs;
    for (int i = 2; i < argc; ++i) inputs.push_back(torchbridge::read_npy(argv[i]));
    if (inputs.empty()) inputs = runtime.golden_inputs();
    const std::vector<at::Tensor> outputs = runtime.forward(inputs);
    for (size_t i = 0; i < outputs.size(); ++i) print_output(i, outputs[i]);
  } catch (const torchbridge::Error& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
