# rcd_unit_test: one unit-test executable (linked with the harness, tests/support/rcd_test.h)
# and one ctest test per test case, so each case runs in its own process.
#
#   rcd_unit_test(<name> <source>... [LIBS <target>...] [LABELS <label>...]
#                 [ALONE <fn>...] [PROPERTIES <property> <value>...] [NO_TSAN])
#
# The cases are the `RUN(fn);` lines of the sources, read here at configure time (editing a
# source re-runs CMake): each becomes the test <name>/<fn>, running `<name> <fn>`. The test
# <name>/cases runs `<name> --expect <fn>...`, which fails when the binary's cases differ from
# that list, so a case this parse missed cannot be skipped silently. A binary without RUN
# lines is one test, <name>. With ALONE, only the cases named get a test (and a process) of
# their own and the others run together as <name>/others: for binaries whose process start
# is dear (those that map the CUDA libraries) and whose short cases outnumber the long ones.
# Every test runs in the source root with RCD_GOLDEN_DIR set;
# LABELS default to `unit`; PROPERTIES go to set_tests_properties (e.g. SKIP_RETURN_CODE 77).
# NO_TSAN: code with no threads of its own; under RCD_SANITIZE=thread it is built, not run.
function(rcd_unit_test name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "NO_TSAN" "" "LIBS;LABELS;PROPERTIES;ALONE")
  set(sources ${arg_UNPARSED_ARGUMENTS})
  if(NOT arg_LABELS)
    set(arg_LABELS unit)
  endif()
  add_executable(${name} ${sources})
  target_link_libraries(${name} rcd_test ${arg_LIBS})
  # NO_TSAN: single-threaded code, checked by the release and ASan runs; TSan (10-30x slower)
  # would only spend CI time on it, so the test is built but not registered there.
  if(arg_NO_TSAN AND RCD_SANITIZE STREQUAL "thread")
    return()
  endif()

  set(cases "")
  foreach(src IN LISTS sources)
    get_filename_component(path ${src} ABSOLUTE BASE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${path})
    file(STRINGS ${path} lines REGEX "^[ \t]*RUN\\([A-Za-z_][A-Za-z0-9_]*\\);")
    foreach(line IN LISTS lines)
      string(REGEX REPLACE "^[ \t]*RUN\\(([A-Za-z0-9_]+)\\);.*$" "\\1" fn "${line}")
      list(APPEND cases ${fn})
    endforeach()
  endforeach()

  set(alone ${cases})
  set(others "")
  if(arg_ALONE)
    foreach(fn IN LISTS arg_ALONE)
      if(NOT fn IN_LIST cases)
        message(FATAL_ERROR "rcd_unit_test(${name}): ALONE ${fn} is not one of its cases")
      endif()
    endforeach()
    set(alone ${arg_ALONE})
    set(others ${cases})
    list(REMOVE_ITEM others ${alone})
  endif()

  set(tests "")
  if(cases)
    add_test(NAME ${name}/cases COMMAND ${name} --expect ${cases}
             WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    list(APPEND tests ${name}/cases)
    foreach(fn IN LISTS alone)
      add_test(NAME ${name}/${fn} COMMAND ${name} ${fn} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
      list(APPEND tests ${name}/${fn})
    endforeach()
    if(others)
      add_test(NAME ${name}/others COMMAND ${name} ${others} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
      list(APPEND tests ${name}/others)
    endif()
  else()
    add_test(NAME ${name} COMMAND ${name} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    list(APPEND tests ${name})
  endif()
  set_tests_properties(${tests} PROPERTIES LABELS "${arg_LABELS}"
    ENVIRONMENT "RCD_GOLDEN_DIR=${RCD_GOLDEN_DIR}" ${arg_PROPERTIES})
endfunction()
