# Included after project() only when building against the ROS 2 wheels from PyPI: tools/setup.sh
# passes it as CMAKE_PROJECT_INCLUDE. A lab's ROS 2 install never needs it.
#
# The wheels' exported <pkg>__rosidl_generator_py targets name the Python and NumPy include
# directories of the machine that built them (/opt/python/cp311-cp311/...), which do not exist
# here, and CMake refuses to generate. Once configuration is done, point every imported target
# that names such a directory at this interpreter's include directories instead.
function(_tdmpc_ros_fix_wheel_include_directories)
  if(NOT Python3_EXECUTABLE)
    message(FATAL_ERROR "ros_wheels.cmake: pass -DPython3_EXECUTABLE=<the venv's python>")
  endif()
  execute_process(
    COMMAND "${Python3_EXECUTABLE}" -c
      "import sysconfig, numpy; print(sysconfig.get_paths()['include'] + ';' + numpy.get_include())"
    OUTPUT_VARIABLE python_includes OUTPUT_STRIP_TRAILING_WHITESPACE COMMAND_ERROR_IS_FATAL ANY)
  get_property(imported_targets DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(target IN LISTS imported_targets)
    get_target_property(include_dirs ${target} INTERFACE_INCLUDE_DIRECTORIES)
    if(include_dirs AND "${include_dirs}" MATCHES "/opt/python/")
      set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${python_includes}")
    endif()
  endforeach()
endfunction()
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _tdmpc_ros_fix_wheel_include_directories)
