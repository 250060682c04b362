// The process-wide token cache (docs/protocol.md §6): one per process, shared by every
// client, keyed by source, ID kind, ID value and resource (both compared
// case-insensitively). It also coordinates the two ways callers share work:
// one proactive refresh per entry, and one request per concurrent miss
// ("flights"). A hit is served from a small per-thread copy of the entry,
// valid while the generation counter has not moved, so it takes no lock and
// writes no shared memory: it scales with threads, and it allocates only the
// strings the caller gets back. After a failed proactive refresh, the entry
// cools down before its next one, so an endpoint outage costs one attempt per
// cool-down rather than one per hit.
#pragma once
#include "response.hpp"

namespace mi {
inline namespace v1 {
namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

constexpr std::chrono::minutes kExpiryMargin{5};  // a token is usable only while it lives longer
constexpr std::chrono::seconds kRefreshCoolDown{30};      // after a first failed proactive refresh,
constexpr std::chrono::seconds kMaxRefreshCoolDown{300};  // doubling on each further one up to this

// What a token is cached under: source, ID kind, ID value and resource (after the
// /.default trim), the two strings compared case-insensitively. Entries, per-thread copies
// and flights own a CacheKey; look-ups borrow the caller's strings in a CacheKeyView, so
// that a hit allocates nothing.
struct CacheKeyView {
  Source source;
  IDKind kind;
  std::string_view id;
  std::string_view resource;
};

struct CacheKey {
  Source source = Source::DefaultToIMDS;
  IDKind kind = IDKind::SystemAssigned;
  std::string id;
  std::string resource;

  static CacheKey from(const CacheKeyView& key) {
    return CacheKey{key.source, key.kind, std::string(key.id), std::string(key.resource)};
  }
  operator CacheKeyView() const noexcept { return CacheKeyView{source, kind, id, resource}; }
};

inline bool same_key(const CacheKeyView& a, const CacheKeyView& b) noexcept {
  return a.source == b.source && a.kind == b.kind && iequals(a.id, b.id) && iequals(a.resource, b.resource);
}

// FNV-1a over the key with ASCII case folded, so look-ups need no lowered copy.
inline uint64_t key_hash(const CacheKeyView& key) noexcept {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](unsigned char c) {
    h ^= c;
    h *= 1099511628211ull;
  };
  mix(static_cast<unsigned char>(key.source));
  mix(static_cast<unsigned char>(key.kind));
  for (char c : key.id) mix(static_cast<unsigned char>(ascii_lower(c)));
  mix(0);
  for (char c : key.resource) mix(static_cast<unsigned char>(ascii_lower(c)));
  return h;
}

// One request in flight for a key; concurrent misses wait on it (docs/protocol.md §6, coalescing).
struct Flight {
  explicit Flight(CacheKey k) : key(std::move(k)) {}
  const CacheKey key;
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  bool leader_stopped = false;  // the leader's own context ended: waiters must try themselves
  std::unique_ptr<Result<AuthResult>> outcome;
};

class TokenCache {
 public:
  // Never destroyed, so threads still running at exit never touch a dead cache.
  static TokenCache& instance() {
    static TokenCache* cache = new TokenCache();
    return *cache;
  }

  // Moves the generation, so that no thread's copy of a cache that lived at this address
  // before matches this one.
  TokenCache() noexcept { generation_.fetch_add(1, std::memory_order_release); }
  TokenCache(const TokenCache&) = delete;
  TokenCache& operator=(const TokenCache&) = delete;

  enum class Hit { miss, fresh, refresh };

  // A usable token (expiring more than 5 minutes after `now`) is copied into `out`
  // (access_token, token_type, expires_on, refresh_on). `refresh` means it is past
  // its refresh time (and any cool-down) and this caller won the right to refresh it;
  // it must call end_refresh(key, ...) afterwards.
  Hit find(const CacheKeyView& key, SysClock::time_point now, AuthResult& out) {
    const uint64_t generation = generation_.load(std::memory_order_acquire);
    if constexpr (kLocalCopiesEnabled) {
      LocalCopies& copies = local_copies();
      for (size_t i = 0; i < copies.used; ++i) {
        const LocalCopy& local = copies.slots[i];
        if (local.generation != generation || local.cache != this || !same_key(local.key, key)) continue;
        if (local.token.expires_on <= now + kExpiryMargin) return Hit::miss;
        if (due_for_refresh(local.token, local.cool_down_until, now)) break;  // claim under the lock
        set_token(out, local.token);
        return Hit::fresh;
      }
    }
    std::shared_lock<std::shared_mutex> lock(mutex_);
    Entry* entry = lookup(key);
    if (entry == nullptr) return Hit::miss;
    if constexpr (kLocalCopiesEnabled) remember(generation, *entry);
    if (entry->token.expires_on <= now + kExpiryMargin) return Hit::miss;
    set_token(out, entry->token);
    if (due_for_refresh(entry->token, entry->cool_down_until, now)) {
      bool expected = false;
      if (entry->refreshing.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) return Hit::refresh;
    }
    return Hit::fresh;
  }

  // Any cached token for the key, usable or not (Service Fabric's revocation hash).
  bool peek(const CacheKeyView& key, Token& out) {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    Entry* entry = lookup(key);
    if (entry == nullptr) return false;
    out = entry->token;
    return true;
  }

  // Ends the refresh find() handed out. After a failure (at `now`) the entry cools down
  // before its next proactive refresh: 30 s, doubling on each further failure up to 5 min,
  // and never past the time the token stops being usable (misses ignore the cool-down).
  // Returns the cool-down started (zero if none).
  std::chrono::seconds end_refresh(const CacheKeyView& key, bool failed, SysClock::time_point now) noexcept {
    if (!failed) {
      std::shared_lock<std::shared_mutex> lock(mutex_);
      if (Entry* entry = lookup(key)) entry->refreshing.store(false, std::memory_order_release);
      return std::chrono::seconds(0);
    }
    std::unique_lock<std::shared_mutex> lock(mutex_);
    Entry* entry = lookup(key);
    if (entry == nullptr) return std::chrono::seconds(0);
    std::chrono::seconds cool_down(0);
    // A token stored meanwhile (not due for refresh) has already ended any cool-down.
    if (entry->token.refresh_on != SysClock::time_point() && now >= entry->token.refresh_on) {
      if (entry->refresh_failures < 16) ++entry->refresh_failures;
      cool_down = kRefreshCoolDown * (int64_t{1} << std::min(entry->refresh_failures - 1, 4));
      if (cool_down > kMaxRefreshCoolDown) cool_down = kMaxRefreshCoolDown;
      entry->cool_down_until = std::min(now + cool_down, entry->token.expires_on - kExpiryMargin);
      generation_.fetch_add(1, std::memory_order_release);  // per-thread copies carry the cool-down
    }
    entry->refreshing.store(false, std::memory_order_release);
    return cool_down;
  }

  // Stores the token if it lives more than 5 minutes past `now`; returns whether it did.
  bool store(const CacheKeyView& key, const Token& token, SysClock::time_point now) {
    if (token.expires_on <= now + kExpiryMargin) return false;
    std::unique_lock<std::shared_mutex> lock(mutex_);
    Entry* entry = lookup(key);
    if (entry == nullptr) {
      entries_.push_back(std::unique_ptr<Entry>(new Entry(CacheKey::from(key))));
      entry = entries_.back().get();
    }
    entry->token = token;
    entry->refresh_failures = 0;  // a new token ends any cool-down
    entry->cool_down_until = SysClock::time_point();
    generation_.fetch_add(1, std::memory_order_release);
    return true;
  }

  // Joins the flight for `key` or, when there is none and no usable token was
  // stored meanwhile, starts one (leader = true). With a usable token, returns
  // nullptr and fills `out`.
  std::shared_ptr<Flight> join_or_lead(const CacheKeyView& key, SysClock::time_point now, bool& leader,
                                       AuthResult& out) {
    std::lock_guard<std::mutex> lock(flights_mutex_);
    // Leaders store before they land, so this re-check closes the miss/land race.
    if (find_usable(key, now, out)) return nullptr;
    for (const std::shared_ptr<Flight>& flight : flights_)
      if (same_key(flight->key, key)) {
        leader = false;
        return flight;
      }
    flights_.push_back(std::make_shared<Flight>(CacheKey::from(key)));
    leader = true;
    return flights_.back();
  }

  // The leader publishes its outcome (after storing a success) and removes the flight.
  void land(const std::shared_ptr<Flight>& flight, const Result<AuthResult>& outcome, bool leader_stopped) {
    std::unique_ptr<Result<AuthResult>> copy(new Result<AuthResult>(outcome));
    unlink(flight);
    std::lock_guard<std::mutex> lock(flight->mutex);
    flight->outcome = std::move(copy);
    flight->leader_stopped = leader_stopped;
    flight->done = true;
    flight->done_cv.notify_all();
  }

  // The leader left without an outcome (user code threw): removes the flight, and its
  // waiters try themselves. Allocates nothing, so it is safe while unwinding.
  void abandon(const std::shared_ptr<Flight>& flight) noexcept {
    unlink(flight);
    std::lock_guard<std::mutex> lock(flight->mutex);
    flight->leader_stopped = true;
    flight->done = true;
    flight->done_cv.notify_all();
  }

 private:
  struct Entry {
    explicit Entry(CacheKey k) : key(std::move(k)), hash(key_hash(key)) {}
    const CacheKey key;
    const uint64_t hash;
    Token token;
    std::atomic<bool> refreshing{false};
    int refresh_failures = 0;              // proactive refreshes failed in a row
    SysClock::time_point cool_down_until;  // no proactive refresh before this
  };
  // A thread's copy of an entry of `cache`, valid only while generation_ has not moved.
  struct LocalCopy {
    uint64_t generation = 0;
    const TokenCache* cache = nullptr;
    SysClock::time_point cool_down_until;
    CacheKey key;
    Token token;
  };
  static constexpr size_t kLocalCopies = 8;
  // MinGW's GCC emulates TLS and frees a thread_local's storage before its destructor runs
  // at thread exit (GCC bug 80816, mingw-w64 bug 527): a thread that used the cache would
  // crash or corrupt the heap as it ends. There, no per-thread copies: hits take the lock.
#if defined(__MINGW32__) && !defined(__clang__)
  static constexpr bool kLocalCopiesEnabled = false;
#else
  static constexpr bool kLocalCopiesEnabled = true;
#endif

  // A thread's copies, replaced oldest first once all kLocalCopies are in use.
  struct LocalCopies {
    LocalCopy slots[kLocalCopies];
    size_t used = 0;    // slots[0, used) hold copies
    size_t oldest = 0;  // the slot to replace next when all are in use
  };

  // The copies hold strings that must be freed when their thread ends, so this is the one
  // variable with a destructor at (thread) exit, on purpose.
  static LocalCopies& local_copies() {
#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wexit-time-destructors"
#endif
    static thread_local LocalCopies copies;
#if defined(__clang__)
#pragma clang diagnostic pop
#endif
    return copies;
  }

  // Keeps a per-thread copy of `entry` stamped with the generation read before the
  // lookup: if a store raced with us, the stamp is already stale and the copy unused.
  void remember(uint64_t generation, const Entry& entry) const {
    LocalCopies& copies = local_copies();
    LocalCopy* slot = nullptr;
    for (size_t i = 0; i < copies.used; ++i) {
      LocalCopy& c = copies.slots[i];
      if (c.cache == this && same_key(c.key, entry.key)) slot = &c;
    }
    if (slot == nullptr) {
      if (copies.used < kLocalCopies) {
        slot = &copies.slots[copies.used++];
      } else {
        slot = &copies.slots[copies.oldest];
        copies.oldest = (copies.oldest + 1) % kLocalCopies;
      }
      slot->cache = this;
      slot->key = entry.key;
    }
    slot->generation = generation;
    slot->token = entry.token;
    slot->cool_down_until = entry.cool_down_until;
  }

  static bool due_for_refresh(const Token& token, SysClock::time_point cool_down_until,
                              SysClock::time_point now) noexcept {
    return token.refresh_on != SysClock::time_point() && now >= token.refresh_on && now >= cool_down_until;
  }

  Entry* lookup(const CacheKeyView& key) const noexcept {
    const uint64_t h = key_hash(key);
    for (const std::unique_ptr<Entry>& e : entries_)
      if (e->hash == h && same_key(e->key, key)) return e.get();
    return nullptr;
  }

  // Removes a flight from the list; the caller's reference keeps it alive.
  void unlink(const std::shared_ptr<Flight>& flight) noexcept {
    std::lock_guard<std::mutex> lock(flights_mutex_);
    for (auto f = flights_.begin(); f != flights_.end(); ++f)
      if (*f == flight) {
        flights_.erase(f);
        return;
      }
  }

  bool find_usable(const CacheKeyView& key, SysClock::time_point now, AuthResult& out) {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    Entry* entry = lookup(key);
    if (entry == nullptr || entry->token.expires_on <= now + kExpiryMargin) return false;
    set_token(out, entry->token);
    return true;
  }

  mutable std::shared_mutex mutex_;
  std::vector<std::unique_ptr<Entry>> entries_;  // under mutex_ (behind pointers: an Entry holds an atomic)
  // Moves on every store, cool-down and new cache. One counter for the process, so that a
  // cache built where another was destroyed never matches that one's copies.
  static inline std::atomic<uint64_t> generation_{1};
  std::mutex flights_mutex_;
  std::vector<std::shared_ptr<Flight>> flights_;  // under flights_mutex_
};

}  // namespace
}  // namespace detail
}  // namespace v1
}  // namespace mi
