// mi::Context: a chain of states, each with its own cancel flag and the
// effective (earliest) deadline of the chain. Checking is lock-free; blocking
// operations wait in short slices so a Cancel() from another thread is seen
// within one slice (kContextSlice).
#pragma once
#include "util.hpp"

namespace mi {
inline namespace v1 {
namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

constexpr Millis kContextSlice{10};

}  // namespace

struct ContextState {
  std::shared_ptr<ContextState> parent;
  SteadyClock::time_point deadline = SteadyClock::time_point::max();
  std::atomic<bool> canceled{false};

  bool is_canceled() const noexcept {
    for (const ContextState* s = this; s != nullptr; s = s->parent.get())
      if (s->canceled.load(std::memory_order_acquire)) return true;
    return false;
  }

  static Context child(const Context& parent, SteadyClock::time_point deadline) {
    auto state = std::make_shared<ContextState>();
    state->parent = parent.state_;
    SteadyClock::time_point inherited = parent.deadline();
    state->deadline = deadline < inherited ? deadline : inherited;
    return Context(std::move(state));
  }
  static const ContextState* of(const Context& ctx) noexcept { return ctx.state_.get(); }
};

namespace {  // internal linkage: nothing below is visible outside this translation unit

// Why a context stopped, or ok.
enum class ContextStatus { ok, canceled, expired };

inline ContextStatus context_status(const Context& ctx) noexcept {
  if (ctx.canceled()) return ContextStatus::canceled;
  if (ctx.expired()) return ContextStatus::expired;
  return ContextStatus::ok;
}

// The error for a context that stopped; `doing` (the parts joined) says what was interrupted.
MI_DETAIL_COLD Error context_error(ContextStatus status, std::initializer_list<std::string_view> doing) {
  std::string message = status == ContextStatus::canceled ? "the request was canceled (mi::Context::Cancel) while "
                                                          : "the context's deadline passed while ";
  for (std::string_view part : doing) message.append(part.data(), part.size());
  if (status == ContextStatus::canceled) return make_error(Errc::canceled, std::move(message));
  message += "; give the call more time (mi::Context::WithTimeout) or check that the endpoint is reachable";
  return make_error(Errc::timeout, std::move(message));
}
MI_DETAIL_COLD inline Error context_error(ContextStatus status, std::string_view doing) {
  return context_error(status, {doing});
}
// context_error as a Result<T>.
template <class T>
MI_DETAIL_COLD Result<T> stopped(ContextStatus status, std::initializer_list<std::string_view> doing) {
  return Result<T>(context_error(status, doing));
}

// Milliseconds left before the context's deadline (capped at `cap`), at least 0.
inline Millis time_left(const Context& ctx, Millis cap) noexcept {
  SteadyClock::time_point deadline = ctx.deadline();
  if (deadline == SteadyClock::time_point::max()) return cap;
  SteadyClock::time_point now = SteadyClock::now();
  if (deadline <= now) return Millis(0);
  auto left = std::chrono::duration_cast<Millis>(deadline - now) + Millis(1);
  return left < cap ? left : cap;
}

// Sleeps for `duration` unless the context stops first; returns its status.
ContextStatus sleep_for(const Context& ctx, Millis duration) {
  SteadyClock::time_point end = SteadyClock::now() + duration;
  for (;;) {
    ContextStatus status = context_status(ctx);
    if (status != ContextStatus::ok) return status;
    SteadyClock::time_point now = SteadyClock::now();
    if (now >= end) return ContextStatus::ok;
    auto slice = std::chrono::duration_cast<Millis>(end - now) + Millis(1);
    std::this_thread::sleep_for(std::min(slice, time_left(ctx, kContextSlice)));
  }
}

}  // namespace
}  // namespace detail

Context Context::WithTimeout(std::chrono::milliseconds timeout) const {
  detail::SteadyClock::time_point now = detail::SteadyClock::now();
  // Saturate instead of overflowing on huge timeouts.
  if (timeout >= std::chrono::duration_cast<detail::Millis>(detail::SteadyClock::time_point::max() - now))
    return detail::ContextState::child(*this, detail::SteadyClock::time_point::max());
  return detail::ContextState::child(*this, now + timeout);
}

Context Context::WithDeadline(std::chrono::steady_clock::time_point deadline) const {
  return detail::ContextState::child(*this, deadline);
}

Context Context::WithCancel() const { return detail::ContextState::child(*this, detail::SteadyClock::time_point::max()); }

void Context::Cancel() const {
  if (state_) state_->canceled.store(true, std::memory_order_release);
}

std::chrono::steady_clock::time_point Context::deadline() const noexcept {
  return state_ ? state_->deadline : detail::SteadyClock::time_point::max();
}

bool Context::canceled() const noexcept { return state_ && state_->is_canceled(); }

bool Context::expired() const noexcept {
  return state_ && state_->deadline != detail::SteadyClock::time_point::max() && detail::SteadyClock::now() >= state_->deadline;
}

}  // namespace v1
}  // namespace mi
