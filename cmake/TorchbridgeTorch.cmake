# torchbridge_find_torch(): locate LibTorch and define the imported target torchbridge::libtorch.
#
# Why not find_package(Torch): the TorchConfig.cmake of PyPI's default (CUDA-enabled) torch wheel
# stops at configure time without a CUDA toolkit, and with a partial toolkit the link fails later.
# torchbridge's C++ code uses only the CPU/CUDA-agnostic API, so it needs headers and two libraries
# (libtorch_cpu, libc10), found the same way for every LibTorch. It does not link libtorch.so: in a
# CUDA build that pulls in libtorch_cuda and the CUDA libraries, about 270 MB of resident memory in
# every process, GPU or not; the runtime loads libtorch_cuda.so itself when a CUDA device is asked for.
#
#   1. TORCHBRIDGE_TORCH_ROOT, a folder with include/torch/script.h and lib/ (a LibTorch);
#   2. a LibTorch on CMAKE_PREFIX_PATH (the LibTorch folder itself, its share/cmake/Torch, or the
#      share/cmake that torch.utils.cmake_prefix_path names);
#   3. the torch package of Python_EXECUTABLE (set by scikit-build-core), else of python3 on PATH.
function(torchbridge_find_torch)
  if(TARGET torchbridge::libtorch)
    return()
  endif()

  set(root "${TORCHBRIDGE_TORCH_ROOT}")
  if(NOT root)
    foreach(prefix IN LISTS CMAKE_PREFIX_PATH)
      # The LibTorch folder, torch.utils.cmake_prefix_path (torch/share/cmake), or share/cmake/Torch.
      foreach(candidate "${prefix}" "${prefix}/../.." "${prefix}/../../.." "${prefix}/torch")
        if(EXISTS "${candidate}/include/torch/script.h")
          get_filename_component(root "${candidate}" ABSOLUTE)
          break()
        endif()
      endforeach()
      if(root)
        break()
      endif()
    endforeach()
  endif()
  if(NOT root)
    set(python "${Python_EXECUTABLE}")
    if(NOT python)
      # Not find_program(python ...): the normal variable set above would hide its result.
      find_program(python_on_path NAMES python3 python NO_CACHE)
      set(python "${python_on_path}")
    endif()
    if(python)
      execute_process(
        COMMAND "${python}" -c "import os, torch; print(os.path.dirname(torch.__file__))"
        OUTPUT_VARIABLE root OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE status)
      if(NOT status EQUAL 0)
        set(root "")
      endif()
    endif()
  endif()
  if(NOT root OR NOT EXISTS "${root}/include/torch/script.h")
    message(FATAL_ERROR
      "torchbridge: LibTorch not found. Install torch in the Python environment that builds "
      "torchbridge (pip install torch==2.14.1, then pip install --no-build-isolation .), or point "
      "CMake at a LibTorch with -DCMAKE_PREFIX_PATH=/path/to/libtorch or -DTORCHBRIDGE_TORCH_ROOT=...")
  endif()

  set(libraries "")
  foreach(name torch_cpu c10)
    find_library(lib_${name} NAMES ${name} PATHS "${root}/lib" NO_DEFAULT_PATH NO_CACHE)
    if(NOT lib_${name})
      message(FATAL_ERROR "torchbridge: ${root}/lib lacks lib${name}; is this a complete LibTorch?")
    endif()
    list(APPEND libraries "${lib_${name}}")
  endforeach()

  # torch >= 2.10 keeps the numbers in headeronly/version.h, older releases in the API header.
  set(version_header "${root}/include/torch/headeronly/version.h")
  if(NOT EXISTS "${version_header}")
    set(version_header "${root}/include/torch/csrc/api/include/torch/version.h")
  endif()
  file(STRINGS "${version_header}" version_lines REGEX "#define TORCH_VERSION_(MAJOR|MINOR|PATCH) ")
  set(version "")
  foreach(part MAJOR MINOR PATCH)
    string(REGEX MATCH "TORCH_VERSION_${part} ([0-9]+)" _ "${version_lines}")
    list(APPEND version "${CMAKE_MATCH_1}")
  endforeach()
  list(JOIN version "." version)
  # torch 2.14's headers refuse anything below C++20; older ones build with C++17.
  if(version VERSION_GREATER_EQUAL 2.14)
    set(standard cxx_std_20)
  else()
    set(standard cxx_std_17)
  endif()
  set(cuda OFF)
  if(EXISTS "${root}/lib/libtorch_cuda.so")
    set(cuda ON)
  endif()

  # CUDA graphs (libtorchbridge_cuda.so) need the CUDA runtime headers of the CUDA release this
  # LibTorch was built with (the pip wheel's nvidia/cu*/include lacks crt/, so a toolkit's headers
  # are the usual source) and the libcudart beside torch. Without them the plugin is not built and
  # the runtime runs CUDA models without graphs.
  set(cuda_graphs OFF)
  if(cuda)
    set(cuda_candidates "")
    if(TORCHBRIDGE_CUDA_ROOT)
      list(APPEND cuda_candidates "${TORCHBRIDGE_CUDA_ROOT}/include")
    endif()
    # The wheel's nvidia/cu<N> folder: headers (without crt/), libcudart, and the CUDA major N
    # LibTorch was built with.
    file(GLOB wheel_cuda LIST_DIRECTORIES true "${root}/../nvidia/cu[0-9]*")
    set(cudart_dirs "")
    set(wheel_major "")
    foreach(folder IN LISTS wheel_cuda)
      list(APPEND cuda_candidates "${folder}/include")
      list(APPEND cudart_dirs "${folder}/lib")
      string(REGEX MATCH "cu([0-9]+)$" _ "${folder}")
      set(wheel_major "${CMAKE_MATCH_1}")
    endforeach()
    list(APPEND cuda_candidates /usr/local/cuda/include)
    find_path(cuda_include NAMES crt/host_defines.h PATHS ${cuda_candidates} NO_DEFAULT_PATH NO_CACHE)
    set(cuda_major "")
    if(cuda_include AND EXISTS "${cuda_include}/cuda.h")
      file(STRINGS "${cuda_include}/cuda.h" cuda_version_line REGEX "#define CUDA_VERSION [0-9]+")
      string(REGEX MATCH "[0-9]+" cuda_version_number "${cuda_version_line}")
      math(EXPR cuda_major "${cuda_version_number} / 1000")
    endif()
    if(cuda_major AND wheel_major AND NOT cuda_major EQUAL wheel_major)
      message(STATUS "torchbridge: CUDA headers at ${cuda_include} are CUDA ${cuda_major}, LibTorch uses CUDA ${wheel_major}: no CUDA graphs plugin")
    elseif(cuda_major)
      list(APPEND cudart_dirs "${cuda_include}/../lib64" "${cuda_include}/../lib")
      find_library(cudart NAMES libcudart.so.${cuda_major} cudart PATHS ${cudart_dirs} NO_DEFAULT_PATH NO_CACHE)
      find_library(lib_torch_cuda NAMES torch_cuda PATHS "${root}/lib" NO_DEFAULT_PATH NO_CACHE)
      find_library(lib_c10_cuda NAMES c10_cuda PATHS "${root}/lib" NO_DEFAULT_PATH NO_CACHE)
      if(cudart AND lib_torch_cuda AND lib_c10_cuda)
        set(cuda_graphs ON)
        get_filename_component(cudart_dir "${cudart}" DIRECTORY)
        set(TORCHBRIDGE_CUDA_INCLUDE "${cuda_include}" PARENT_SCOPE)
        set(TORCHBRIDGE_CUDA_LIBRARIES "${lib_torch_cuda};${lib_c10_cuda};${cudart}" PARENT_SCOPE)
        set(TORCHBRIDGE_CUDART_DIR "${cudart_dir}" PARENT_SCOPE)
      endif()
    endif()
  endif()
  set(TORCHBRIDGE_CUDA_GRAPHS_AVAILABLE ${cuda_graphs} PARENT_SCOPE)

  add_library(torchbridge::libtorch INTERFACE IMPORTED GLOBAL)
  set_target_properties(torchbridge::libtorch PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${root}/include;${root}/include/torch/csrc/api/include"
    INTERFACE_COMPILE_FEATURES "${standard}"
    # --no-as-needed keeps both linked (operators register from static initializers); dlopen loads
    # libtorch_cuda.so for a CUDA device.
    INTERFACE_LINK_LIBRARIES "-Wl,--no-as-needed;${libraries};-Wl,--as-needed;${CMAKE_DL_LIBS}")
  set(TORCHBRIDGE_TORCH_ROOT "${root}" CACHE PATH "LibTorch used by torchbridge" FORCE)
  set(TORCHBRIDGE_TORCH_VERSION "${version}" PARENT_SCOPE)
  set(TORCHBRIDGE_TORCH_LIBDIR "${root}/lib" PARENT_SCOPE)
  message(STATUS "torchbridge: LibTorch ${version} at ${root} (CUDA build: ${cuda}, CUDA graphs plugin: ${cuda_graphs})")
endfunction()
