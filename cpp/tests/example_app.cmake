# Proves find_package(torchbridge) works for a user's project: installs this build into a scratch
# prefix, builds examples/cpp_app against that install, runs the app with no LD_LIBRARY_PATH and
# checks what it prints against Python's printout of the same outputs (data/*_app_output.txt).
#
#   cmake -DBUILD_DIR=... -DSOURCE_DIR=... -DWORK_DIR=... -DDATA_DIR=... -DGENERATOR=...
#         [-DMAKE_PROGRAM=...] [-DCXX_COMPILER=...] [-DSANITIZE=address,...] -P example_app.cmake
cmake_minimum_required(VERSION 3.21)

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT status EQUAL 0)
    list(JOIN ARGN " " shown)
    message(FATAL_ERROR "failed (${status}): ${shown}\n${out}")
  endif()
endfunction()

# Lines must match; numbers may differ by 1 in the last printed digit (rounding of float noise).
function(compare_printout actual expected_file)
  file(STRINGS "${expected_file}" expected_lines)
  string(REGEX REPLACE "\n$" "" actual "${actual}")
  string(REPLACE "\n" ";" actual_lines "${actual}")
  list(LENGTH expected_lines expected_count)
  list(LENGTH actual_lines actual_count)
  if(NOT actual_count EQUAL expected_count)
    message(FATAL_ERROR "app printed ${actual_count} lines, ${expected_file} has ${expected_count}:\n${actual}")
  endif()
  foreach(actual_line expected_line IN ZIP_LISTS actual_lines expected_lines)
    string(REPLACE " " ";" actual_items "${actual_line}")
    string(REPLACE " " ";" expected_items "${expected_line}")
    foreach(a e IN ZIP_LISTS actual_items expected_items)
      if(a MATCHES "^-?[0-9]+\\.[0-9]+$" AND e MATCHES "^-?[0-9]+\\.[0-9]+$")
        foreach(var a e)  # "-0.055717" -> -55717 (millionths, leading zeros dropped)
          string(REPLACE "." "" ${var} "${${var}}")
          string(REGEX REPLACE "^(-?)0+([0-9])" "\\1\\2" ${var} "${${var}}")
        endforeach()
        math(EXPR difference "${a} - ${e}")
        if(difference GREATER 1 OR difference LESS -1)
          message(FATAL_ERROR "app printed '${actual_line}', Python '${expected_line}'")
        endif()
      elseif(NOT a STREQUAL e)
        message(FATAL_ERROR "app printed '${actual_line}', Python '${expected_line}'")
      endif()
    endforeach()
  endforeach()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
run("${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${WORK_DIR}/install")
set(configure "${CMAKE_COMMAND}" -S "${SOURCE_DIR}/examples/cpp_app" -B "${WORK_DIR}/build" -G "${GENERATOR}"
  "-DCMAKE_PREFIX_PATH=${WORK_DIR}/install")
if(MAKE_PROGRAM)
  list(APPEND configure "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(CXX_COMPILER)
  list(APPEND configure "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(SANITIZE)  # a sanitized libtorchbridge needs the app linked with the same runtime
  list(APPEND configure "-DCMAKE_CXX_FLAGS=-fsanitize=${SANITIZE} -fno-omit-frame-pointer"
    "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=${SANITIZE}")
endif()
run(${configure})
run("${CMAKE_COMMAND}" --build "${WORK_DIR}/build")

foreach(sample tiny_mlp two_io)
  if(sample STREQUAL "tiny_mlp")
    set(inputs "${DATA_DIR}/tiny_mlp_input.npy")
  else()
    set(inputs "${DATA_DIR}/two_io_input_0.npy" "${DATA_DIR}/two_io_input_1.npy")
  endif()
  execute_process(
    COMMAND "${CMAKE_COMMAND}" -E env --unset=LD_LIBRARY_PATH
            "${WORK_DIR}/build/app" "${DATA_DIR}/${sample}.pt" ${inputs}
    RESULT_VARIABLE status OUTPUT_VARIABLE printed ERROR_VARIABLE errors)
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "app on ${sample} exited ${status}:\n${printed}${errors}")
  endif()
  compare_printout("${printed}" "${DATA_DIR}/${sample}_app_output.txt")
  message("${sample}: app output matches Python's\n${printed}")
endforeach()
