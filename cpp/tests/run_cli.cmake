# Runs a command and checks its exact exit status, for the end-to-end tests of torchbridge-run:
#
#   cmake -DEXPECT_EXIT=N [-DEXPECT_STDOUT=text] [-DEXPECT_STDERR=text] [-DOUTPUT_DIR=dir]
#         [-DTHEN=command|arg|...] -P run_cli.cmake -- COMMAND [ARG...]
#
# EXPECT_STDOUT / EXPECT_STDERR: text that must appear in that stream (plain text, not a regex).
# OUTPUT_DIR: emptied before the run, so files left by an earlier run cannot pass the test.
# THEN: a second command (arguments separated by |) that must exit 0 afterwards, e.g. a comparison.
cmake_minimum_required(VERSION 3.21)

set(command "")
set(after_separator FALSE)
foreach(i RANGE 1 ${CMAKE_ARGC})
  if(after_separator AND DEFINED CMAKE_ARGV${i})
    list(APPEND command "${CMAKE_ARGV${i}}")
  elseif("${CMAKE_ARGV${i}}" STREQUAL "--")
    set(after_separator TRUE)
  endif()
endforeach()
list(LENGTH command command_length)
if(command_length EQUAL 0 OR NOT DEFINED EXPECT_EXIT)
  message(FATAL_ERROR "usage: cmake -DEXPECT_EXIT=N [...] -P run_cli.cmake -- COMMAND [ARG...]")
endif()

if(OUTPUT_DIR)
  file(REMOVE_RECURSE "${OUTPUT_DIR}")
  file(MAKE_DIRECTORY "${OUTPUT_DIR}")
endif()

execute_process(COMMAND ${command} RESULT_VARIABLE status OUTPUT_VARIABLE stdout ERROR_VARIABLE stderr)
list(JOIN command " " shown)
set(report "command: ${shown}\nexit status: ${status}\n--- stdout\n${stdout}--- stderr\n${stderr}---")

if(NOT "${status}" STREQUAL "${EXPECT_EXIT}")
  message(FATAL_ERROR "expected exit status ${EXPECT_EXIT}, got ${status}\n${report}")
endif()
foreach(stream stdout stderr)
  string(TOUPPER "${stream}" upper)
  if(DEFINED EXPECT_${upper})
    string(FIND "${${stream}}" "${EXPECT_${upper}}" found)
    if(found EQUAL -1)
      message(FATAL_ERROR "${stream} lacks '${EXPECT_${upper}}'\n${report}")
    endif()
  endif()
endforeach()
message("${report}")

if(THEN)
  string(REPLACE "|" ";" then "${THEN}")
  execute_process(COMMAND ${then} RESULT_VARIABLE then_status OUTPUT_VARIABLE then_out ERROR_VARIABLE then_out)
  string(REPLACE ";" " " then_shown "${then}")
  message("then: ${then_shown}\n${then_out}")
  if(NOT then_status EQUAL 0)
    message(FATAL_ERROR "the check after the run failed (exit status ${then_status})")
  endif()
endif()
