# End-to-end test of the mi-token tool against tools/mi_emulator.py (a local
# emulator of every managed identity source; 127.0.0.1 only, port 0).
# Included from tests/CMakeLists.txt; needs Python3_EXECUTABLE from find_package(Python3).
if(TARGET mi-token)
  add_test(NAME e2e_mi_token
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/e2e_mi_token.py $<TARGET_FILE:mi-token>)
  set_tests_properties(e2e_mi_token PROPERTIES TIMEOUT 300)
endif()

# The emulator's workload identity mode (Entra ID's token endpoint and the AKS token proxy),
# tested from Python alone: needs no C++ target, only the openssl command-line tool (else skipped).
add_test(NAME emulator_workload
         COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/test_emulator_workload.py)
set_tests_properties(emulator_workload PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77)
