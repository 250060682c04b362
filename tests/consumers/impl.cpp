// The one implementation TU of a consumer that links the header-only mi::managed_identity.
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"
