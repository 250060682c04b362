// Test helpers for the process-wide token cache, built from the cache's own interface
// (the library ships no call that only tests would use). Include after managed_identity.hpp
// with MI_IMPLEMENTATION defined.
#pragma once

#include <new>
#include <string_view>

namespace support {

// Empties the process-wide cache before a test. No program needs to drop tokens, so the
// library has no call for it: the cache is rebuilt in place instead (a new TokenCache moves
// the generation, so no thread's copy of an old token matches it). Only while no other
// thread uses the cache.
inline void fresh_cache() {
  mi::detail::TokenCache& cache = mi::detail::TokenCache::instance();
  cache.~TokenCache();
  ::new (static_cast<void*>(&cache)) mi::detail::TokenCache();
}

// Whether the process-wide cache holds a token (usable or not) for `resource` requested
// with `id` from the source the environment selects.
inline bool cached(const mi::ID& id, std::string_view resource) {
  mi::detail::Token token;
  const mi::detail::CacheKeyView key{mi::GetSource(), id.kind(), id.value(), mi::detail::trim_default_scope(resource)};
  return mi::detail::TokenCache::instance().peek(key, token);
}

}  // namespace support
