// Counts the heap bytes each thread holds, by replacing the global operator new and
// delete: tests read how much memory a parser keeps without the library exposing it.
// Include in exactly one source file of a program (it defines the replacements).
#ifndef MI_TEST_HEAP_BYTES_HPP
#define MI_TEST_HEAP_BYTES_HPP

#include <cstddef>
#include <cstdlib>
#include <functional>
#include <new>
#include <string>
#include <utility>
#include <vector>

namespace heap {

// Bytes allocated with operator new on this thread and not deleted yet (on any thread).
inline thread_local long long held_bytes = 0;
inline long long held() noexcept { return held_bytes; }

// The block operator new was asked for to hold a string's characters; 0 when they live
// inside the string object (the short-string buffer).
inline size_t of(const std::string& s) noexcept {
  const char* self = reinterpret_cast<const char*>(&s);
  std::less<const char*> before;
  bool inside = !before(s.data(), self) && before(s.data(), self + sizeof s);
  return inside ? 0 : s.capacity() + 1;
}

inline size_t of(const std::vector<std::pair<std::string, std::string>>& list) noexcept {
  size_t total = list.capacity() * sizeof(list[0]);
  for (const auto& item : list) total += of(item.first) + of(item.second);
  return total;
}

constexpr size_t kPrefix = alignof(std::max_align_t) > sizeof(size_t) ? alignof(std::max_align_t) : sizeof(size_t);

inline void* allocate(size_t n) noexcept {
  char* block = static_cast<char*>(std::malloc(n + kPrefix));
  if (block == nullptr) return nullptr;
  *reinterpret_cast<size_t*>(block) = n;
  held_bytes += static_cast<long long>(n);
  return block + kPrefix;
}

inline void release(void* p) noexcept {
  if (p == nullptr) return;
  char* block = static_cast<char*>(p) - kPrefix;
  held_bytes -= static_cast<long long>(*reinterpret_cast<size_t*>(block));
  std::free(block);
}

inline void* allocate_or_throw(size_t n) {
  void* p = allocate(n);
#if defined(__cpp_exceptions)
  if (p == nullptr) throw std::bad_alloc();
#else
  if (p == nullptr) std::abort();
#endif
  return p;
}

}  // namespace heap

void* operator new(std::size_t n) { return heap::allocate_or_throw(n); }
void* operator new[](std::size_t n) { return heap::allocate_or_throw(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return heap::allocate(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return heap::allocate(n); }
void operator delete(void* p) noexcept { heap::release(p); }
void operator delete[](void* p) noexcept { heap::release(p); }
void operator delete(void* p, std::size_t) noexcept { heap::release(p); }
void operator delete[](void* p, std::size_t) noexcept { heap::release(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { heap::release(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { heap::release(p); }

#endif  // MI_TEST_HEAP_BYTES_HPP
