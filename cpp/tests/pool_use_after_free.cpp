// Built only with AddressSanitizer: reads an output's memory after the tensor is gone. The block is
// back in the runtime's memory pool, not freed, and the pool poisons it, so ASan must still report
// the read (ctest expects its "use-after-poison" report; the program reaching its end fails).
#include <cstdio>

#include <ATen/ATen.h>

#include "torchbridge/runtime.hpp"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const torchbridge::Runtime runtime(argv[1]);
  const float* data = nullptr;
  {
    const at::Tensor input = at::randn({8192, 4});
    const at::Tensor output = runtime.forward({input})[0];  // 96 KiB: pooled
    data = output.data_ptr<float>();
  }
  volatile float read = data[0];
  std::printf("read freed memory without a report: %f\n", static_cast<double>(read));
  return 0;
}
