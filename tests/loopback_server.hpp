// A tiny HTTP server for tests: listens on 127.0.0.1 with port 0 (never a fixed
// port, never another address), records every request, and answers each with
// whatever the test's handler returns -- including malformed or hostile bytes.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(_WIN32)
#include <winsock2.h>
#include <ws2tcpip.h>
typedef SOCKET testsrv_socket;
#define TESTSRV_INVALID INVALID_SOCKET
#define testsrv_close closesocket
#else
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
typedef int testsrv_socket;
#define TESTSRV_INVALID (-1)
#define testsrv_close ::close
#endif

namespace testsrv {

inline std::string lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

inline std::string url_decode(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      out.push_back(static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

struct Request {
  std::string method, target, path, raw_query, version, body, raw;
  std::vector<std::pair<std::string, std::string>> headers;

  // First value of a header (name compared case-insensitively), "" when absent.
  std::string header(const std::string& name) const {
    for (const auto& h : headers)
      if (lower(h.first) == lower(name)) return h.second;
    return "";
  }
  bool has_header(const std::string& name) const {
    for (const auto& h : headers)
      if (lower(h.first) == lower(name)) return true;
    return false;
  }
  // Query parameters in order, decoded.
  std::vector<std::pair<std::string, std::string>> query_list() const {
    std::vector<std::pair<std::string, std::string>> out;
    size_t pos = 0;
    while (pos <= raw_query.size() && !raw_query.empty()) {
      size_t amp = raw_query.find('&', pos);
      std::string part = raw_query.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
      size_t eq = part.find('=');
      out.emplace_back(url_decode(part.substr(0, eq)), eq == std::string::npos ? "" : url_decode(part.substr(eq + 1)));
      if (amp == std::string::npos) break;
      pos = amp + 1;
    }
    return out;
  }
  std::map<std::string, std::string> query() const {
    std::map<std::string, std::string> out;
    for (auto& kv : query_list()) out.insert(kv);
    return out;
  }
};

// Fills method, target, path, query, version and headers from a request head (no CRLFCRLF).
inline void parse_request_head(const std::string& head, Request& req) {
  size_t line_end = head.find("\r\n");
  std::string line = head.substr(0, line_end);
  size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
  req.method = line.substr(0, sp1);
  req.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  req.version = line.substr(sp2 + 1);
  size_t q = req.target.find('?');
  req.path = req.target.substr(0, q);
  req.raw_query = q == std::string::npos ? "" : req.target.substr(q + 1);
  size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
  while (pos < head.size()) {
    size_t e = head.find("\r\n", pos);
    if (e == std::string::npos) e = head.size();
    std::string h = head.substr(pos, e - pos);
    size_t colon = h.find(':');
    std::string value = colon == std::string::npos ? "" : h.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    req.headers.emplace_back(h.substr(0, colon), value);
    pos = e + 2;
  }
}

struct Reply {
  std::string raw;          // exact bytes to send
  int delay_ms = 0;         // wait this long before sending anything
  int byte_delay_ms = 0;    // > 0: send one byte at a time with this pause
  bool hang = false;        // never answer (until the server stops)
  bool close_now = false;   // close without sending anything
  long long close_after = -1;  // >= 0: send at most this many bytes of `raw`, then close normally (FIN)
  long long reset_after = -1;  // >= 0: send at most this many bytes of `raw`, then reset (RST: SO_LINGER 0)
  std::string endless;         // non-empty: after `raw`, send this again and again until the
                               // client disconnects or the server stops (a stream without end)

  static Reply http(int status, const std::string& body,
                    const std::vector<std::pair<std::string, std::string>>& headers = {},
                    const std::string& reason = "") {
    Reply r;
    r.raw = "HTTP/1.1 " + std::to_string(status) + " " + (reason.empty() ? "Status" : reason) + "\r\n";
    bool has_type = false;
    for (const auto& h : headers) {
      r.raw += h.first + ": " + h.second + "\r\n";
      if (lower(h.first) == "content-type") has_type = true;
    }
    if (!has_type) r.raw += "Content-Type: application/json\r\n";
    r.raw += "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
    return r;
  }
  static Reply json(const std::string& body) { return http(200, body); }
  // `head` once, then `repeat` forever.
  static Reply stream(const std::string& head, const std::string& repeat) {
    Reply r;
    r.raw = head;
    r.endless = repeat;
    return r;
  }
};

class Server {
 public:
  using Handler = std::function<Reply(const Request&)>;

  explicit Server(Handler handler) : handler_(std::move(handler)) {
#if defined(_WIN32)
    WSADATA data;
    WSAStartup(MAKEWORD(2, 2), &data);
#endif
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const char*>(&one), sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener_, 256) != 0) {
      std::fprintf(stderr, "loopback_server: bind/listen failed\n");
      std::abort();
    }
    socklen_t len = sizeof addr;
    getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server() { stop(); }

  void stop() {
    if (stopping_.exchange(true)) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      cv_.notify_all();
    }
    if (acceptor_.joinable()) acceptor_.join();
    testsrv_close(listener_);
    std::vector<std::thread> workers;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      workers.swap(workers_);
    }
    for (auto& t : workers) t.join();
  }

  uint16_t port() const { return port_; }
  std::string base() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string url(const std::string& path = "/metadata/identity/oauth2/token") const { return base() + path; }

  std::vector<Request> requests() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_;
  }
  size_t request_count() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_.size();
  }
  size_t connection_count() const { return connections_.load(); }
  // Connections still sending an endless stream (0 once every client has hung up).
  size_t streaming_count() const { return streaming_.load(); }
  Request last() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_.empty() ? Request() : requests_.back();
  }

 private:
  void accept_loop() {
    while (!stopping_) {
#if defined(_WIN32)
      WSAPOLLFD p{listener_, POLLRDNORM, 0};
      int r = WSAPoll(&p, 1, 20);
#else
      pollfd p{listener_, POLLIN, 0};
      int r = ::poll(&p, 1, 20);
#endif
      if (r <= 0) continue;
      testsrv_socket s = ::accept(listener_, nullptr, nullptr);
      if (s == TESTSRV_INVALID) continue;
      ++connections_;
      std::lock_guard<std::mutex> lock(mutex_);
      workers_.emplace_back([this, s] { serve(s); });
    }
  }

  // Waits up to ms, returning early (true) when the server is stopping.
  bool pause(int ms) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, std::chrono::milliseconds(ms), [this] { return stopping_.load(); });
  }

  bool read_request(testsrv_socket s, Request& req) {
    std::string data;
    char buf[4096];
    size_t head_end = std::string::npos;
    for (;;) {
      head_end = data.find("\r\n\r\n");
      if (head_end != std::string::npos) break;
      if (!wait_readable(s)) return false;
      long n = ::recv(s, buf, sizeof buf, 0);
      if (n <= 0) return false;
      data.append(buf, static_cast<size_t>(n));
    }
    parse_request_head(data.substr(0, head_end), req);
    size_t length = 0;
    if (req.has_header("Content-Length")) length = std::strtoul(req.header("Content-Length").c_str(), nullptr, 10);
    std::string body = data.substr(head_end + 4);
    while (body.size() < length) {
      if (!wait_readable(s)) return false;
      long n = ::recv(s, buf, sizeof buf, 0);
      if (n <= 0) return false;
      body.append(buf, static_cast<size_t>(n));
    }
    req.body = body;
    req.raw = data.substr(0, head_end + 4) + body;
    return true;
  }

  bool wait_readable(testsrv_socket s) {
    while (!stopping_) {
#if defined(_WIN32)
      WSAPOLLFD p{s, POLLRDNORM, 0};
      int r = WSAPoll(&p, 1, 20);
#else
      pollfd p{s, POLLIN, 0};
      int r = ::poll(&p, 1, 20);
#endif
      if (r > 0) return true;
      if (r < 0) return false;
    }
    return false;
  }

  // Gives up when the server stops or the client has not read for 10 s, so stop() never hangs.
  // False when it gave up or the client went away before everything was sent.
  bool send_all(testsrv_socket s, const char* data, size_t n) {
    auto idle_since = std::chrono::steady_clock::now();
    while (n > 0 && !stopping_) {
#if defined(_WIN32)
      WSAPOLLFD p{s, POLLWRNORM, 0};
      int r = WSAPoll(&p, 1, 20);
#else
      pollfd p{s, POLLOUT, 0};
      int r = ::poll(&p, 1, 20);
#endif
      if (r < 0) return false;
      if (r == 0) {
        if (std::chrono::steady_clock::now() - idle_since > std::chrono::seconds(10)) return false;
        continue;
      }
      idle_since = std::chrono::steady_clock::now();
      size_t chunk = n < 16384 ? n : 16384;  // small enough not to block after POLLOUT
#if defined(_WIN32)
      int sent = ::send(s, data, static_cast<int>(chunk), 0);
#else
      long sent = ::send(s, data, chunk, MSG_NOSIGNAL);
#endif
      if (sent <= 0) return false;
      data += sent;
      n -= static_cast<size_t>(sent);
    }
    return n == 0;
  }

  // Hard close: the peer sees a reset (RST) instead of an orderly end of stream.
  static void reset_close(testsrv_socket s) {
    linger hard{};
    hard.l_onoff = 1;
    hard.l_linger = 0;
    setsockopt(s, SOL_SOCKET, SO_LINGER, reinterpret_cast<const char*>(&hard), sizeof hard);
    testsrv_close(s);
  }

  void serve(testsrv_socket s) {
    Request req;
    if (read_request(s, req)) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        requests_.push_back(req);
      }
      Reply reply = handler_(req);
      if (reply.delay_ms > 0 && pause(reply.delay_ms)) reply.raw.clear();
      long long cut = reply.reset_after >= 0 ? reply.reset_after : reply.close_after;
      if (cut >= 0 && static_cast<unsigned long long>(cut) < reply.raw.size())
        reply.raw.resize(static_cast<size_t>(cut));
      if (reply.hang) {
        while (!pause(1000)) {
        }
      } else if (!reply.close_now) {
        bool ok = true;
        bool endless = cut < 0 && !reply.endless.empty();
        if (endless) ++streaming_;
        if (reply.byte_delay_ms > 0) {
          for (char c : reply.raw) {
            ok = send_all(s, &c, 1);
            if (!ok || pause(reply.byte_delay_ms)) break;
          }
        } else {
          ok = send_all(s, reply.raw.data(), reply.raw.size());
        }
        if (endless) {
          while (ok && !stopping_) ok = send_all(s, reply.endless.data(), reply.endless.size());
          --streaming_;
        }
      }
      if (reply.reset_after >= 0) {
        reset_close(s);
        return;
      }
    }
#if defined(_WIN32)
    shutdown(s, SD_SEND);
#else
    shutdown(s, SHUT_WR);
#endif
    testsrv_close(s);
  }

  Handler handler_;
  testsrv_socket listener_ = TESTSRV_INVALID;
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<size_t> connections_{0};
  std::atomic<size_t> streaming_{0};
  std::thread acceptor_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  std::vector<Request> requests_;
};

}  // namespace testsrv
