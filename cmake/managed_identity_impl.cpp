// The compiled implementation behind the CMake target mi::managed_identity_impl.
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"
