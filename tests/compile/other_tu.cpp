// A third TU: a forgotten `inline` in the declarations becomes a link error here.
#include "managed_identity.hpp"

int other_tu() { return mi::to_string(mi::GetSource()).empty() ? 1 : 0; }
