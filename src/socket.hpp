// The transport for http:// endpoints: one TCP connection per request over POSIX
// or WinSock sockets. No proxy (metadata endpoints are link-local or loopback),
// no redirects, no pooling. Connecting, sending and receiving wait in slices of
// kContextSlice so a Cancel() from another thread or the context's deadline stops
// them promptly. Numeric hosts (the usual metadata endpoints) skip DNS; a host
// name is resolved on a helper thread, so that its wait is bounded the same way.
#pragma once
#include "context.hpp"
#include "http.hpp"
#include "url.hpp"

namespace mi {
inline namespace v1 {
namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

#if MI_DETAIL_WINDOWS
using socket_handle = SOCKET;
#else
using socket_handle = int;
#endif

// How the transport turns a host name into addresses: getaddrinfo's contract, and the
// list it returns is freed with freeaddrinfo. A parameter of SocketTransport rather than a
// direct call, so that tests can pass a resolver that blocks until they release it.
using Resolver = int (*)(const char* host, const char* port, const addrinfo* hints, addrinfo** out);

inline int system_resolver(const char* host, const char* port, const addrinfo* hints, addrinfo** out) {
  return ::getaddrinfo(host, port, hints, out);
}

namespace sock_impl {

#if MI_DETAIL_WINDOWS
const socket_handle kNoSocket = INVALID_SOCKET;
#else
constexpr socket_handle kNoSocket = -1;
#if defined(MSG_NOSIGNAL)
constexpr int kSendFlags = MSG_NOSIGNAL;
#else
constexpr int kSendFlags = 0;  // SO_NOSIGPIPE is set on the socket instead (Apple)
#endif
#endif

inline int last_error() noexcept {
#if MI_DETAIL_WINDOWS
  return WSAGetLastError();
#else
  return errno;
#endif
}

inline bool is_interrupted(int err) noexcept {
#if MI_DETAIL_WINDOWS
  return err == WSAEINTR;
#else
  return err == EINTR;
#endif
}

inline bool would_block(int err) noexcept {
#if MI_DETAIL_WINDOWS
  return err == WSAEWOULDBLOCK;
#else
  return err == EAGAIN || err == EWOULDBLOCK;
#endif
}

// A short, lowercase reason for an OS socket error (thread-safe, no strerror).
MI_DETAIL_COLD std::string describe_error(int err) {
#if MI_DETAIL_WINDOWS
  switch (err) {
    case WSAECONNREFUSED: return "connection refused";
    case WSAETIMEDOUT: return "timed out";
    case WSAENETUNREACH: return "network unreachable";
    case WSAEHOSTUNREACH: return "host unreachable";
    case WSAENETDOWN: return "network is down";
    case WSAECONNRESET: return "connection reset by peer";
    case WSAECONNABORTED: return "connection aborted";
    case WSAESHUTDOWN: return "connection shut down";
    case WSAEADDRNOTAVAIL: return "address not available";
    case WSAEAFNOSUPPORT: return "address family not supported";
    case WSAEACCES: return "permission denied";
    case WSAEMFILE: return "too many open sockets";
    case WSAENOBUFS: return "no buffer space available";
    case WSAHOST_NOT_FOUND: return "host not found";
    case WSATRY_AGAIN: return "temporary name resolution failure";
    case WSANO_DATA: return "no address for the host name";
    case WSANO_RECOVERY: return "name resolution failed";
    case WSANOTINITIALISED: return "WinSock not initialised";
    case WSASYSNOTREADY: return "network subsystem not ready";
    case WSAVERNOTSUPPORTED: return "WinSock 2.2 not supported";
    default: return cat({"WinSock error ", num(err)});
  }
#else
  switch (err) {
    case ECONNREFUSED: return "connection refused";
    case ETIMEDOUT: return "timed out";
    case ENETUNREACH: return "network unreachable";
    case EHOSTUNREACH: return "host unreachable";
    case ENETDOWN: return "network is down";
    case ECONNRESET: return "connection reset by peer";
    case ECONNABORTED: return "connection aborted";
    case EPIPE: return "connection closed by peer";
    case EADDRNOTAVAIL: return "address not available";
    case EAFNOSUPPORT: return "address family not supported";
    case EACCES: return "permission denied";
    case EPERM: return "operation not permitted";
    case EMFILE: return "too many open files";
    case ENFILE: return "too many open files in the system";
    case ENOBUFS: return "no buffer space available";
    case ENOMEM: return "out of memory";
    default: return cat({"errno ", num(err)});
  }
#endif
}

// WinSock is started on first use, once per process (never by a static object).
inline bool network_ready(int& err) {
#if MI_DETAIL_WINDOWS
  static std::once_flag once;
  static int result = 0;
  std::call_once(once, [] {
    WSADATA data;
    result = WSAStartup(MAKEWORD(2, 2), &data);
  });
  err = result;
  return result == 0;
#else
  err = 0;
  return true;
#endif
}

inline void close_socket(socket_handle s) noexcept {
  if (s == kNoSocket) return;
#if MI_DETAIL_WINDOWS
  ::closesocket(s);
#else
  ::close(s);  // never retried on EINTR: the descriptor is gone either way (Linux)
#endif
}

// Owns a socket; closes it on scope exit.
class SocketGuard {
 public:
  explicit SocketGuard(socket_handle s = kNoSocket) noexcept : s_(s) {}
  SocketGuard(const SocketGuard&) = delete;
  SocketGuard& operator=(const SocketGuard&) = delete;
  ~SocketGuard() { close_socket(s_); }
  socket_handle get() const noexcept { return s_; }
  socket_handle release() noexcept {
    socket_handle s = s_;
    s_ = kNoSocket;
    return s;
  }

 private:
  socket_handle s_;
};

// Owns a getaddrinfo result.
struct AddrInfoDeleter {
  void operator()(addrinfo* list) const noexcept { ::freeaddrinfo(list); }
};
using AddrList = std::unique_ptr<addrinfo, AddrInfoDeleter>;

// getaddrinfo cannot be interrupted, so a host name is looked up on a detached
// thread while the caller waits in context slices: Cancel(), the context's deadline
// and the connect timeout bound the wait. A lookup that outlives its caller
// finishes alone; whoever drops the last reference frees the result. At most
// kMaxHostLookups such threads run at once: with a stalled resolver, callers that
// give up would otherwise leave one more thread behind each time.
struct HostLookup {
  std::string host, port;
  addrinfo hints{};
  Resolver resolve = &system_resolver;
  std::mutex mutex;
  std::condition_variable finished;
  bool done = false;
  int rc = 0;
  int sys_error = 0;  // errno when rc is EAI_SYSTEM
  AddrList list;

  void run() noexcept {
    addrinfo* out = nullptr;
    int code = resolve(host.c_str(), port.c_str(), &hints, &out);
    int sys = errno;
    std::lock_guard<std::mutex> lock(mutex);
    rc = code;
    sys_error = sys;
    list.reset(out);
    done = true;
    finished.notify_all();
  }
};

constexpr int kMaxHostLookups = 4;

struct HostLookupSlots {
  std::mutex mutex;
  std::condition_variable freed;
  int busy = 0;  // lookups running (on a thread or inline)
};

// Never destroyed: a detached lookup may return its slot while the process exits.
inline HostLookupSlots& host_lookup_slots() {
  static HostLookupSlots* slots = new HostLookupSlots();
  return *slots;
}

inline void release_host_lookup_slot() noexcept {
  HostLookupSlots& slots = host_lookup_slots();
  {
    std::lock_guard<std::mutex> lock(slots.mutex);
    --slots.busy;
  }
  slots.freed.notify_all();  // all: a woken waiter may leave (canceled) without taking it
}

#if MI_DETAIL_WINDOWS
inline DWORD WINAPI host_lookup_main(LPVOID arg) {
#else
inline void* host_lookup_main(void* arg) {
#endif
  {
    std::unique_ptr<std::shared_ptr<HostLookup>> lookup(static_cast<std::shared_ptr<HostLookup>*>(arg));
    (*lookup)->run();
  }
  release_host_lookup_slot();
#if MI_DETAIL_WINDOWS
  return 0;
#else
  return nullptr;
#endif
}

// Starts `lookup` on a detached thread; false when no thread could be made.
inline bool start_host_lookup(const std::shared_ptr<HostLookup>& lookup) {
  auto* arg = new (std::nothrow) std::shared_ptr<HostLookup>(lookup);
  if (arg == nullptr) return false;
#if MI_DETAIL_WINDOWS
  HANDLE thread = ::CreateThread(nullptr, 0, &host_lookup_main, arg, 0, nullptr);
  if (thread == nullptr) {
    delete arg;
    return false;
  }
  ::CloseHandle(thread);
  return true;
#else
  pthread_attr_t attr;
  if (::pthread_attr_init(&attr) != 0) {
    delete arg;
    return false;
  }
  ::pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t thread;
  int rc = ::pthread_create(&thread, &attr, &host_lookup_main, arg);
  ::pthread_attr_destroy(&attr);
  if (rc != 0) {
    delete arg;
    return false;
  }
  return true;
#endif
}

// A non-blocking, close-on-exec TCP socket with TCP_NODELAY and no SIGPIPE.
socket_handle open_socket(int family, int type, int protocol, int& err) {
#if MI_DETAIL_WINDOWS
#if defined(WSA_FLAG_NO_HANDLE_INHERIT)
  const DWORD no_inherit = WSA_FLAG_NO_HANDLE_INHERIT;
#else
  const DWORD no_inherit = 0x80;  // older SDKs lack the name
#endif
  SOCKET s = ::WSASocketW(family, type, protocol, nullptr, 0, WSA_FLAG_OVERLAPPED | no_inherit);
  if (s == INVALID_SOCKET && WSAGetLastError() == WSAEINVAL)  // Windows 7 before SP1: no such flag
    s = ::WSASocketW(family, type, protocol, nullptr, 0, WSA_FLAG_OVERLAPPED);
  if (s == INVALID_SOCKET) {
    err = WSAGetLastError();
    return kNoSocket;
  }
  u_long non_blocking = 1;
  if (::ioctlsocket(s, static_cast<long>(FIONBIO), &non_blocking) != 0) {
    err = WSAGetLastError();
    ::closesocket(s);
    return kNoSocket;
  }
#else
#if defined(SOCK_CLOEXEC) && defined(SOCK_NONBLOCK)
  int s = ::socket(family, type | SOCK_CLOEXEC | SOCK_NONBLOCK, protocol);
  if (s < 0) {
    err = errno;
    return kNoSocket;
  }
#else
  int s = ::socket(family, type, protocol);
  if (s < 0) {
    err = errno;
    return kNoSocket;
  }
  int fd_flags = ::fcntl(s, F_GETFD);
  int fl_flags = ::fcntl(s, F_GETFL);
  if (fd_flags < 0 || ::fcntl(s, F_SETFD, fd_flags | FD_CLOEXEC) < 0 || fl_flags < 0 ||
      ::fcntl(s, F_SETFL, fl_flags | O_NONBLOCK) < 0) {
    err = errno;
    ::close(s);
    return kNoSocket;
  }
#endif
#if defined(SO_NOSIGPIPE)
  int no_sigpipe = 1;
  ::setsockopt(s, SOL_SOCKET, SO_NOSIGPIPE, &no_sigpipe, static_cast<socklen_t>(sizeof no_sigpipe));
#endif
#endif
  int one = 1;
  ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, reinterpret_cast<const char*>(&one), static_cast<socklen_t>(sizeof one));
  err = 0;
  return s;
}

enum class Wait { ready, stopped, deadline, failed };

// Waits until `s` is readable (or writable), polling in slices of at most
// kContextSlice so the context is checked often. `until` bounds the wait too
// (time_point::max() for none). On `stopped`, `status` says why; on `failed`, `err`.
Wait wait_socket(socket_handle s, bool for_write, bool connecting, const Context& ctx, SteadyClock::time_point until,
                 ContextStatus& status, int& err) {
  for (;;) {
    status = context_status(ctx);
    if (status != ContextStatus::ok) return Wait::stopped;
    SteadyClock::time_point now = SteadyClock::now();
    if (until != SteadyClock::time_point::max() && now >= until) return Wait::deadline;
    Millis slice = time_left(ctx, kContextSlice);
    if (until != SteadyClock::time_point::max()) {
      Millis left = std::chrono::duration_cast<Millis>(until - now) + Millis(1);
      if (left < slice) slice = left;
    }
    int ms = static_cast<int>(slice.count());
#if MI_DETAIL_WINDOWS
    int r;
    if (connecting) {
      // WSAPoll does not report a failed connect on older Windows 10 builds; select does.
      (void)for_write;
      fd_set writable, failed;
      FD_ZERO(&writable);
      FD_ZERO(&failed);
      FD_SET(s, &writable);
      FD_SET(s, &failed);
      timeval tv;
      tv.tv_sec = ms / 1000;
      tv.tv_usec = (ms % 1000) * 1000;
      r = ::select(0, nullptr, &writable, &failed, &tv);
    } else {
      WSAPOLLFD p{};
      p.fd = s;
      p.events = for_write ? POLLWRNORM : POLLRDNORM;
      r = ::WSAPoll(&p, 1, ms);
    }
    if (r > 0) return Wait::ready;
    if (r < 0) {
      err = WSAGetLastError();
      if (err == WSAEINTR) continue;
      return Wait::failed;
    }
#else
    (void)connecting;
    pollfd p{};
    p.fd = s;
    p.events = for_write ? POLLOUT : POLLIN;
    int r = ::poll(&p, 1, ms);
    if (r > 0) return Wait::ready;  // POLLERR and POLLHUP too: the next call reports them
    if (r < 0) {
      err = errno;
      if (err == EINTR) continue;
      return Wait::failed;
    }
#endif
  }
}

// What bounds one connect: the context, and the connect timeout (`until`, time_point::max()
// for none) counted from the start of the connect.
struct ConnectBudget {
  const Context& ctx;
  Millis timeout;
  SteadyClock::time_point until;
};

inline SteadyClock::time_point connect_deadline(Millis connect_timeout) {
  SteadyClock::time_point start = SteadyClock::now();
  if (connect_timeout.count() > 0 &&
      connect_timeout < std::chrono::duration_cast<Millis>(SteadyClock::time_point::max() - start))
    return start + connect_timeout;
  return SteadyClock::time_point::max();
}

// One slice of a wait on `cv`, or false when the context or the connect timeout ends it
// (`status` then says whether the context did).
bool wait_slice(const ConnectBudget& budget, std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                ContextStatus& status) {
  status = context_status(budget.ctx);
  if (status != ContextStatus::ok) return false;
  SteadyClock::time_point now = SteadyClock::now();
  if (now >= budget.until) return false;
  Millis slice = time_left(budget.ctx, kContextSlice);
  if (budget.until != SteadyClock::time_point::max())
    slice = std::min(slice, std::chrono::duration_cast<Millis>(budget.until - now) + Millis(1));
  cv.wait_for(lock, slice);
  return true;
}

// The wait for a lookup (or for a free lookup slot, `busy`) ended before its answer.
Result<AddrList> lookup_wait_ended(const ConnectBudget& budget, ContextStatus status, const std::string& host,
                                   const char* busy) {
  if (status != ContextStatus::ok) return stopped<AddrList>(status, {"resolving the host name ", host});
  return failure<AddrList>(Errc::timeout, {"resolving the host name ", host, " timed out after ",
                                           num(budget.timeout.count()), " ms", busy,
                                           ": check the endpoint URL and this machine's DNS settings"});
}

Result<AddrList> lookup_failed(const std::string& host, int rc, int sys_error) {
#if MI_DETAIL_WINDOWS
  (void)sys_error;
  std::string reason = describe_error(rc != 0 ? rc : WSAHOST_NOT_FOUND);
#else
  std::string reason = rc != 0 ? ascii_lowercase(::gai_strerror(rc)) : std::string("no address");
#if defined(EAI_SYSTEM)
  if (rc == EAI_SYSTEM) reason = describe_error(sys_error);
#endif
#endif
  return failure<AddrList>(Errc::network, {"could not resolve the host name ", host, " (", reason,
                                           "): check the endpoint URL and this machine's DNS settings"});
}

// Looks a host name up on a helper thread, once one of the kMaxHostLookups slots is free,
// and waits for the answer in context slices.
Result<AddrList> lookup_host_name(const ConnectBudget& budget, const std::string& host, const std::string& port,
                                  const addrinfo& hints, Resolver resolve) {
  auto lookup = std::make_shared<HostLookup>();
  lookup->host = host;
  lookup->port = port;
  lookup->hints = hints;
  lookup->hints.ai_flags &= ~AI_NUMERICHOST;
  lookup->resolve = resolve;
  ContextStatus status = ContextStatus::ok;
  {
    HostLookupSlots& slots = host_lookup_slots();
    std::unique_lock<std::mutex> lock(slots.mutex);
    while (slots.busy >= kMaxHostLookups)
      if (!wait_slice(budget, lock, slots.freed, status))
        return lookup_wait_ended(budget, status, host, " (all lookup threads were busy)");
    ++slots.busy;
  }
  if (!start_host_lookup(lookup)) {  // no thread to spare: look up inline
    lookup->run();
    release_host_lookup_slot();
  }
  std::unique_lock<std::mutex> lock(lookup->mutex);
  while (!lookup->done)
    if (!wait_slice(budget, lock, lookup->finished, status)) return lookup_wait_ended(budget, status, host, "");
  if (lookup->rc != 0 || !lookup->list) return lookup_failed(host, lookup->rc, lookup->sys_error);
  return std::move(lookup->list);
}

// The addresses of url.host: an IP literal converted at once, without any DNS look-up; a
// host name looked up on a helper thread.
Result<AddrList> resolve_host(const ConnectBudget& budget, const Url& url, Resolver resolve) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  hints.ai_flags = AI_NUMERICHOST;
#if defined(AI_NUMERICSERV)
  hints.ai_flags |= AI_NUMERICSERV;
#endif
  const std::string port = num(url.port);
  addrinfo* numeric = nullptr;
  int rc = resolve(url.host.c_str(), port.c_str(), &hints, &numeric);
  if (rc != 0) return lookup_host_name(budget, url.host, port, hints, resolve);  // not an IP literal
  if (numeric == nullptr) return lookup_failed(url.host, 0, 0);
  return AddrList(numeric);
}

// One address tried: `sock` connected, or kNoSocket and `err` saying why this address
// failed (the next one may still work).
struct Attempt {
  socket_handle sock = kNoSocket;
  int err = 0;
};

// Connects to one address within the budget; an error (context, connect timeout) ends
// the whole connect.
Result<Attempt> connect_one(const ConnectBudget& budget, const addrinfo& ai, const std::string& where) {
  int err = 0;
  SocketGuard sock(open_socket(ai.ai_family, ai.ai_socktype, ai.ai_protocol, err));
  if (sock.get() == kNoSocket) return Attempt{kNoSocket, err};
#if MI_DETAIL_WINDOWS
  int r = ::connect(sock.get(), ai.ai_addr, static_cast<int>(ai.ai_addrlen));
  bool pending = r != 0 && WSAGetLastError() == WSAEWOULDBLOCK;
#else
  int r = ::connect(sock.get(), ai.ai_addr, ai.ai_addrlen);
  // EINTR: the connection goes on asynchronously, exactly as with EINPROGRESS.
  bool pending = r != 0 && (errno == EINPROGRESS || errno == EINTR);
#endif
  if (r != 0 && !pending) return Attempt{kNoSocket, last_error()};
  if (pending) {
    ContextStatus status = ContextStatus::ok;
    Wait w = wait_socket(sock.get(), true, true, budget.ctx, budget.until, status, err);
    if (w == Wait::stopped) return stopped<Attempt>(status, {"connecting to ", where});
    if (w == Wait::deadline)
      return failure<Attempt>(Errc::timeout, {"connecting to ", where, " timed out after ", num(budget.timeout.count()),
                                              " ms: check that the endpoint address is right and reachable from "
                                              "this machine (a firewall may be dropping the packets)"});
    if (w == Wait::failed) return Attempt{kNoSocket, err};
    int so_error = 0;
    socklen_t len = static_cast<socklen_t>(sizeof so_error);
    if (::getsockopt(sock.get(), SOL_SOCKET, SO_ERROR, reinterpret_cast<char*>(&so_error), &len) != 0)
      so_error = last_error();
    if (so_error != 0) return Attempt{kNoSocket, so_error};
  }
  return Attempt{sock.release(), 0};
}

// Resolves url.host and connects to each address in turn, all within connect_timeout and
// the context. Returns the socket.
Result<socket_handle> connect_to(const Context& ctx, const Url& url, const std::string& where, Millis connect_timeout,
                                 Resolver resolve) {
  int err = 0;
  if (!network_ready(err))
    return failure<socket_handle>(Errc::network, {"could not start WinSock (", describe_error(err), ")"});
  const ConnectBudget budget{ctx, connect_timeout, connect_deadline(connect_timeout)};
  Result<AddrList> addresses = resolve_host(budget, url, resolve);
  if (!addresses) return addresses.error();
  ContextStatus status = context_status(ctx);
  if (status != ContextStatus::ok) return stopped<socket_handle>(status, {"connecting to ", where});

  int connect_err = 0;
  for (const addrinfo* ai = addresses->get(); ai != nullptr; ai = ai->ai_next) {
    Result<Attempt> attempt = connect_one(budget, *ai, where);
    if (!attempt) return attempt.error();
    if (attempt->sock != kNoSocket) return attempt->sock;
    connect_err = attempt->err;
  }
#if MI_DETAIL_WINDOWS
  bool refused = connect_err == WSAECONNREFUSED;
#else
  bool refused = connect_err == ECONNREFUSED;
#endif
  return failure<socket_handle>(Errc::network,
                                {"could not connect to ", where, " (", describe_error(connect_err), "): ",
                                 refused ? "is the managed identity endpoint running?"
                                         : "check that the endpoint address is right and reachable "
                                           "from this machine"});
}

// Sends all of `data`, waiting (in context slices) whenever the socket is full.
Result<bool> send_all(const Context& ctx, socket_handle s, std::string_view data, const std::string& where) {
  size_t sent = 0;
  while (sent < data.size()) {
    ContextStatus status = context_status(ctx);
    if (status != ContextStatus::ok) return stopped<bool>(status, {"sending the request to ", where});
    size_t chunk = data.size() - sent;
#if MI_DETAIL_WINDOWS
    if (chunk > static_cast<size_t>(INT_MAX)) chunk = static_cast<size_t>(INT_MAX);
    int n = ::send(s, data.data() + sent, static_cast<int>(chunk), 0);
#else
    ssize_t n = ::send(s, data.data() + sent, chunk, kSendFlags);
#endif
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    int err = n == 0 ? 0 : last_error();
    if (n < 0 && is_interrupted(err)) continue;
    if (n < 0 && would_block(err)) {
      Wait w = wait_socket(s, true, false, ctx, SteadyClock::time_point::max(), status, err);
      if (w == Wait::stopped) return stopped<bool>(status, {"sending the request to ", where});
      if (w == Wait::ready) continue;
    }
    return failure<bool>(Errc::network, {"could not send the request to ", where, " (",
                                         n == 0 ? std::string("connection closed") : describe_error(err),
                                         "): the endpoint dropped the connection; retrying may help"});
  }
  return true;
}

// Reads until the parser has one complete response, the peer closes, or the context stops.
MI_DETAIL_NOINLINE Result<HttpResponse> receive_response(const Context& ctx, socket_handle s, const std::string& where) {
  ResponseParser parser;
  char buffer[16 * 1024];
  for (;;) {
    // Checked on every read too, so a peer that keeps the socket busy cannot outlast the context.
    ContextStatus status = context_status(ctx);
    if (status != ContextStatus::ok) return stopped<HttpResponse>(status, {"waiting for the response from ", where});
#if MI_DETAIL_WINDOWS
    int n = ::recv(s, buffer, static_cast<int>(sizeof buffer), 0);
#else
    ssize_t n = ::recv(s, buffer, sizeof buffer, 0);
#endif
    ResponseParser::Status st = ResponseParser::Status::need_more;
    if (n > 0) {
      st = parser.feed(buffer, static_cast<size_t>(n));
    } else if (n == 0) {
      st = parser.finish();
    } else {
      int err = last_error();
      if (is_interrupted(err)) continue;
      if (!would_block(err))
        return failure<HttpResponse>(Errc::network,
                                     {"reading the response from ", where, " failed (", describe_error(err),
                                      "): the endpoint dropped the connection; retrying may help"});
      Wait w = wait_socket(s, false, false, ctx, SteadyClock::time_point::max(), status, err);
      if (w == Wait::stopped) return stopped<HttpResponse>(status, {"waiting for the response from ", where});
      if (w == Wait::failed)
        return failure<HttpResponse>(Errc::network,
                                     {"waiting for the response from ", where, " failed (", describe_error(err), ")"});
      continue;
    }
    if (st == ResponseParser::Status::done) return std::move(parser.response());
    if (st == ResponseParser::Status::error) {
      Error e = parser.error();
      ErrorAccess::set_message(e, cat({e.message(), " (endpoint ", where, ")"}));
      return e;
    }
  }
}

}  // namespace sock_impl

class SocketTransport final : public HttpClient {
 public:
  // connect_timeout bounds connecting (all addresses together); zero or less: only the
  // context does. `resolve` looks host names up (tests pass one that blocks on demand).
  explicit SocketTransport(Millis connect_timeout = Millis(5000), Resolver resolve = &system_resolver)
      : connect_timeout_(connect_timeout), resolve_(resolve) {}
  Result<HttpResponse> Do(const Context& ctx, const HttpRequest& request) override;

 private:
  Millis connect_timeout_;
  Resolver resolve_;
};

Result<HttpResponse> SocketTransport::Do(const Context& ctx, const HttpRequest& request) {
  Result<WireRequest> wire = serialize_request(request);  // the one parse of request.url
  if (!wire) return wire.error();
  const Url& url = wire->url;
  if (url.scheme != "http")
    return failure<HttpResponse>(Errc::tls, {"HTTPS needs MI_USE_CURL: this build has no TLS transport (define "
                                             "MI_USE_CURL where MI_IMPLEMENTATION is defined, with the libcurl and "
                                             "OpenSSL headers installed)"});
  const std::string where = url.authority();
  ContextStatus status = context_status(ctx);
  if (status != ContextStatus::ok) return stopped<HttpResponse>(status, {"connecting to ", where});

  Result<socket_handle> connected = sock_impl::connect_to(ctx, url, where, connect_timeout_, resolve_);
  if (!connected) return connected.error();
  sock_impl::SocketGuard sock(connected.value());
  Result<bool> sent = sock_impl::send_all(ctx, sock.get(), wire->bytes, where);
  if (!sent) return sent.error();
  return sock_impl::receive_response(ctx, sock.get(), where);
}

}  // namespace
}  // namespace detail
}  // namespace v1
}  // namespace mi
