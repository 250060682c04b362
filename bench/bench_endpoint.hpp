// A minimal IMDS endpoint for the benchmarks: one thread, raw POSIX sockets,
// 127.0.0.1 port 0 only. It reads a request head (up to the blank line), answers
// one fixed 200 response with Connection: close, closes, and counts requests.
// Nothing here parses or validates: it is as cheap as a server can be, so that a
// cold AcquireToken measures the client, not the server.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

namespace bench {

// A token-shaped string of `size` characters (header.payload.signature, base64url
// alphabet), like the 1.2-2.5 KB access tokens Entra ID issues.
inline std::string fake_token(size_t size) {
  static const char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string t = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiIsIng1dCI6ImJlbmNoIiwia2lkIjoiYmVuY2gifQ.";
  uint32_t x = 2463534242u;
  while (t.size() < size) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    t.push_back(kAlphabet[x % 64]);
    if (t.size() == size * 3 / 4) t.push_back('.');
  }
  t.resize(size);
  return t;
}

// An IMDS success body (all values strings, as IMDS sends them) around a token of
// `token_size` characters; about token_size + 420 bytes.
inline std::string imds_body(const std::string& resource, size_t token_size) {
  const long long now = static_cast<long long>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  const std::string exp = std::to_string(now + 86400);
  return "{\"access_token\":\"" + fake_token(token_size) +
         "\",\"client_id\":\"7dd2f7ae-5a5f-4ab0-9ab5-1a9b2a6d9e04\",\"expires_in\":\"86400\",\"expires_on\":\"" + exp +
         "\",\"ext_expires_in\":\"86399\",\"not_before\":\"" + std::to_string(now) + "\",\"resource\":\"" + resource +
         "\",\"token_type\":\"Bearer\"}";
}

inline std::string http_200(const std::string& body) {
  return "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nServer: bench\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
}

class Endpoint {
 public:
  // `response` is the full HTTP response sent to every request.
  explicit Endpoint(std::string response) : response_(std::move(response)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) die("socket");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) die("bind");
    if (::listen(listen_fd_, 4096) != 0) die("listen");
    socklen_t len = sizeof addr;
    if (::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) die("getsockname");
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;
  ~Endpoint() {
    stop_.store(true);
    ::shutdown(listen_fd_, SHUT_RDWR);  // wakes accept() on Linux
    thread_.join();
    ::close(listen_fd_);
  }

  uint16_t port() const { return port_; }
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  uint64_t requests() const { return requests_.load(); }
  void reset_requests() { requests_.store(0); }
  // The head of the first request received (to replay it byte for byte elsewhere).
  std::string first_request() {
    std::lock_guard<std::mutex> lock(mutex_);
    return first_request_;
  }
  // Waits this long before answering each request (to hold callers in flight).
  void set_delay(std::chrono::microseconds delay) { delay_us_.store(delay.count()); }

 private:
  static void die(const char* what) {
    std::perror(what);
    std::exit(1);
  }

  void run() {
    char buf[8192];
    while (!stop_.load()) {
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (stop_.load()) return;
        continue;
      }
      // Read the head; the GET requests measured here have no body.
      std::string head;
      bool complete = false;
      for (;;) {
        ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        head.append(buf, static_cast<size_t>(n));
        if (head.find("\r\n\r\n") != std::string::npos) {
          complete = true;
          break;
        }
      }
      if (complete) {
        if (requests_.fetch_add(1) == 0) {
          std::lock_guard<std::mutex> lock(mutex_);
          if (first_request_.empty()) first_request_ = head;
        }
        if (long long d = delay_us_.load()) std::this_thread::sleep_for(std::chrono::microseconds(d));
        size_t sent = 0;
        while (sent < response_.size()) {
          ssize_t n = ::send(fd, response_.data() + sent, response_.size() - sent, MSG_NOSIGNAL);
          if (n <= 0) break;
          sent += static_cast<size_t>(n);
        }
      }
      ::close(fd);
    }
  }

  std::string response_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> requests_{0};
  std::atomic<long long> delay_us_{0};
  std::mutex mutex_;
  std::string first_request_;
  std::thread thread_;
};

// One HTTP exchange with plain blocking sockets: connect, send `request`, read to EOF.
// Returns the number of bytes received (0 on failure).
inline size_t raw_round_trip(uint16_t port, const std::string& request) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  size_t total = 0;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
    char buf[16 * 1024];
    for (;;) {
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      total += static_cast<size_t>(n);
    }
  }
  ::close(fd);
  return total;
}

}  // namespace bench
