// The implementation TU: the header once for declarations, then again with
// MI_IMPLEMENTATION (the inner guard makes this legal), then a third time.
#include "managed_identity.hpp"
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"
#include "managed_identity.hpp"

int use_the_api();
int other_tu();
int main() { return use_the_api() + other_tu(); }
