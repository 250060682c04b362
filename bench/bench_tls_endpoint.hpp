// A minimal HTTPS endpoint for the workload identity benchmark (issue 11): one thread,
// blocking OpenSSL over POSIX sockets, 127.0.0.1 port 0 only. Each connection: the TLS
// handshake, then (if the client sends one) a request head and its Content-Length body,
// one fixed response, close_notify, close. Nothing is parsed beyond the framing, so that
// a cold acquisition measures the client and the handshake, not the server.
//
// Also the floors the acquisition is compared with, made with libcurl directly: a TLS
// handshake alone (CURLOPT_CONNECT_ONLY) and one HTTPS round trip, each on a fresh handle
// with no connection or session reuse, proxies off. The certificates come from
// tests/tls_server.hpp (a CA and a leaf naming 127.0.0.1, P-256, made at run time).
#pragma once

#include "../tests/tls_server.hpp"

#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

namespace bench {

class TlsEndpoint {
 public:
  // `response` is the full HTTP response sent to every request.
  TlsEndpoint(const tlssrv::Identity& leaf, std::string response) : response_(std::move(response)) {
    ctx_ = SSL_CTX_new(TLS_server_method());
    if (ctx_ == nullptr || SSL_CTX_use_certificate(ctx_, leaf.cert.get()) != 1 ||
        SSL_CTX_use_PrivateKey(ctx_, leaf.key.get()) != 1)
      die("SSL_CTX setup");
    SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
    SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_OFF);  // every handshake is a full one
    SSL_CTX_set_num_tickets(ctx_, 0);
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) die("socket");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) die("bind");
    if (::listen(listen_fd_, 256) != 0) die("listen");
    socklen_t len = sizeof addr;
    if (::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) die("getsockname");
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  TlsEndpoint(const TlsEndpoint&) = delete;
  TlsEndpoint& operator=(const TlsEndpoint&) = delete;
  ~TlsEndpoint() {
    stop_.store(true);
    ::shutdown(listen_fd_, SHUT_RDWR);  // wakes accept() on Linux
    thread_.join();
    ::close(listen_fd_);
    SSL_CTX_free(ctx_);
  }

  uint16_t port() const { return port_; }
  std::string base_url() const { return "https://127.0.0.1:" + std::to_string(port_) + "/"; }
  uint64_t requests() const { return requests_.load(); }
  uint64_t handshakes() const { return handshakes_.load(); }
  // The body of the first request received (the form a floor posts again).
  std::string first_body() {
    std::lock_guard<std::mutex> lock(mutex_);
    return first_body_;
  }
  std::string first_path() {
    std::lock_guard<std::mutex> lock(mutex_);
    return first_path_;
  }

 private:
  static void die(const char* what) {
    std::fprintf(stderr, "bench_tls_endpoint: %s failed\n", what);
    std::exit(1);
  }

  void run() {
    tlssrv::block_sigpipe_in_this_thread();
    while (!stop_.load()) {
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (stop_.load()) return;
        continue;
      }
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      SSL* ssl = SSL_new(ctx_);
      SSL_set_fd(ssl, fd);
      if (SSL_accept(ssl) == 1) {
        handshakes_.fetch_add(1);
        serve(ssl);
      }
      ERR_clear_error();
      SSL_free(ssl);
      ::close(fd);
    }
  }

  void serve(SSL* ssl) {
    std::string data;
    char buf[16 * 1024];
    size_t head_end;
    while ((head_end = data.find("\r\n\r\n")) == std::string::npos) {
      int n = SSL_read(ssl, buf, sizeof buf);
      if (n <= 0) return;  // a handshake-only client hangs up here
      data.append(buf, static_cast<size_t>(n));
    }
    size_t length = 0;
    std::string head = data.substr(0, head_end);
    for (char& c : head) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    size_t at = head.find("\r\ncontent-length:");
    if (at != std::string::npos) length = std::strtoul(head.c_str() + at + 17, nullptr, 10);
    while (data.size() < head_end + 4 + length) {
      int n = SSL_read(ssl, buf, sizeof buf);
      if (n <= 0) return;
      data.append(buf, static_cast<size_t>(n));
    }
    if (requests_.fetch_add(1) == 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      first_body_ = data.substr(head_end + 4, length);
      size_t sp1 = data.find(' '), sp2 = data.find(' ', sp1 + 1);
      first_path_ = data.substr(sp1 + 1, sp2 - sp1 - 1);
    }
    size_t sent = 0;
    while (sent < response_.size()) {
      int n = SSL_write(ssl, response_.data() + sent, static_cast<int>(response_.size() - sent));
      if (n <= 0) return;
      sent += static_cast<size_t>(n);
    }
    SSL_shutdown(ssl);
  }

  std::string response_;
  SSL_CTX* ctx_ = nullptr;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> requests_{0}, handshakes_{0};
  std::mutex mutex_;
  std::string first_body_, first_path_;
  std::thread thread_;
};

// One HTTPS exchange with libcurl on a fresh handle: connect, full TLS handshake (chain and
// host name checked against `ca_file` alone), POST `body` to `url`, read the response.
// `connect_only`: stop after the handshake. Returns the response bytes (1 for a completed
// handshake with connect_only; 0 on failure).
inline size_t curl_https(const std::string& url, const std::string& ca_file, const std::string& body,
                         bool connect_only) {
  CURL* easy = curl_easy_init();
  if (easy == nullptr) return 0;
  std::string out;
  curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
  curl_easy_setopt(easy, CURLOPT_CAINFO, ca_file.c_str());
  curl_easy_setopt(easy, CURLOPT_CAPATH, static_cast<const char*>(nullptr));
  curl_easy_setopt(easy, CURLOPT_PROXY, "");
  curl_easy_setopt(easy, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_FORBID_REUSE, 1L);
  curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);
  curl_easy_setopt(easy, CURLOPT_SSL_SESSIONID_CACHE, 0L);
  curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_1_1));
  curl_easy_setopt(easy, CURLOPT_SSLVERSION, static_cast<long>(CURL_SSLVERSION_TLSv1_2));
  if (connect_only) {
    curl_easy_setopt(easy, CURLOPT_CONNECT_ONLY, 1L);
  } else {
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION,
                     +[](char* data, size_t size, size_t n, void* user) -> size_t {
                       static_cast<std::string*>(user)->append(data, size * n);
                       return size * n;
                     });
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, static_cast<void*>(&out));
  }
  CURLcode rc = curl_easy_perform(easy);
  curl_easy_cleanup(easy);
  if (rc != CURLE_OK) return 0;
  return connect_only ? 1 : out.size();
}

// connect() and close() on loopback, no data: what a TLS handshake is measured above.
inline bool tcp_connect(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

}  // namespace bench
