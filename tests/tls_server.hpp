// A TLS test server (OpenSSL) on 127.0.0.1 port 0 with a key and certificate made
// at run time. It records, per connection, whether the handshake completed and how
// many application-data bytes arrived after it, parses the HTTP request and answers
// with whatever the test's handler returns (testsrv::Reply from loopback_server.hpp).
#pragma once

#include "loopback_server.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>
#include <vector>

namespace tlssrv {

// A private key and a certificate for it, self-signed or issued by another Identity.
struct Identity {
  std::shared_ptr<EVP_PKEY> key;
  std::shared_ptr<X509> cert;

  // SHA-1 of the certificate's DER encoding: 20 raw bytes, and as 40 uppercase hex digits.
  std::string sha1() const {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (X509_digest(cert.get(), EVP_sha1(), md, &len) != 1) std::abort();
    return std::string(reinterpret_cast<const char*>(md), len);
  }
  std::string sha1_hex() const {
    static const char hex[] = "0123456789ABCDEF";
    std::string out;
    for (char ch : sha1()) {
      unsigned char c = static_cast<unsigned char>(ch);
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    }
    return out;
  }
};

inline std::shared_ptr<EVP_PKEY> make_key() {
  EVP_PKEY_CTX* kctx = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, nullptr);
  EVP_PKEY* key = nullptr;
  if (kctx == nullptr || EVP_PKEY_keygen_init(kctx) != 1 ||
      EVP_PKEY_CTX_set_ec_paramgen_curve_nid(kctx, NID_X9_62_prime256v1) != 1 || EVP_PKEY_keygen(kctx, &key) != 1) {
    std::fprintf(stderr, "tls_server: key generation failed\n");
    std::abort();
  }
  EVP_PKEY_CTX_free(kctx);
  return std::shared_ptr<EVP_PKEY>(key, EVP_PKEY_free);
}

// When a certificate is valid, in seconds from now (notBefore, notAfter).
struct Validity {
  long from = -3600;
  long until = 24L * 3600;
};
// Valid from two days ago until yesterday.
inline Validity expired() { return Validity{-2L * 24 * 3600, -24L * 3600}; }

// issuer == nullptr: self-signed. `alt_names`: subjectAltName entries such as
// "DNS:localhost" or "IP:127.0.0.1" (none: the certificate names only its common name).
inline Identity make_identity(const std::string& common_name, const Identity* issuer = nullptr, bool ca = false,
                              const std::vector<std::string>& alt_names = {}, Validity validity = Validity()) {
  Identity id;
  id.key = make_key();
  X509* x = X509_new();
  X509_set_version(x, 2);
  unsigned char serial[8];
  RAND_bytes(serial, sizeof serial);
  serial[0] &= 0x7f;
  BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(x), validity.from);
  X509_gmtime_adj(X509_getm_notAfter(x), validity.until);
  X509_set_pubkey(x, id.key.get());
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(common_name.c_str()), -1,
                             -1, 0);
  X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer->cert.get()) : name);
  if (ca) {
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer ? issuer->cert.get() : x, x, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, NID_basic_constraints, "critical,CA:TRUE");
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
  }
  if (!alt_names.empty()) {
    std::string list;
    for (const std::string& name : alt_names) list += (list.empty() ? "" : ",") + name;
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer ? issuer->cert.get() : x, x, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, list.c_str());
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
  }
  if (X509_sign(x, issuer ? issuer->key.get() : id.key.get(), EVP_sha256()) == 0) {
    std::fprintf(stderr, "tls_server: certificate signing failed\n");
    std::abort();
  }
  id.cert = std::shared_ptr<X509>(x, X509_free);
  return id;
}

// The certificate as PEM text, and written to a file.
inline std::string pem(const Identity& id) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(bio, id.cert.get());
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(n));
  BIO_free(bio);
  return out;
}
inline void write_pem(const Identity& id, const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) std::abort();
  std::string text = pem(id);
  std::fwrite(text.data(), 1, text.size(), f);
  std::fclose(f);
}

struct Options {
  int max_version = 0;                 // e.g. TLS1_2_VERSION; 0 = OpenSSL's highest
  std::vector<Identity> extra_chain;   // sent after the leaf
  bool close_after_handshake = false;  // hang up without reading anything
};

// The server's threads write with OpenSSL's socket BIO (plain write()): keep a peer
// that hangs up from killing the test process, without touching the process-wide
// SIGPIPE disposition (the library under test must cope with SIGPIPE on its own).
inline void block_sigpipe_in_this_thread() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

class Server {
 public:
  using Handler = std::function<testsrv::Reply(const testsrv::Request&)>;

  Server(const Identity& identity, Handler handler, Options options = Options())
      : handler_(std::move(handler)), options_(std::move(options)) {
    ctx_ = make_ctx(identity);
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener_, 64) != 0) {
      std::fprintf(stderr, "tls_server: bind/listen failed\n");
      std::abort();
    }
    socklen_t len = sizeof addr;
    getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server() {
    stop();
    SSL_CTX_free(ctx_);
  }

  // Later handshakes present `identity` instead (the same options); one in progress keeps
  // the one it started with.
  void present(const Identity& identity) {
    SSL_CTX* next = make_ctx(identity);
    std::lock_guard<std::mutex> lock(mutex_);
    SSL_CTX_free(ctx_);  // connections hold their own reference (SSL_new)
    ctx_ = next;
  }

  void stop() {
    if (stopping_.exchange(true)) return;
    if (acceptor_.joinable()) acceptor_.join();
    ::close(listener_);
    std::vector<std::thread> workers;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      workers.swap(workers_);
    }
    for (auto& t : workers) t.join();
  }

  uint16_t port() const { return port_; }
  std::string url(const std::string& path = "/metadata/identity/oauth2/token") const {
    return "https://127.0.0.1:" + std::to_string(port_) + path;
  }

  size_t connections() const { return connections_.load(); }
  size_t handshakes_ok() const { return handshakes_ok_.load(); }
  size_t handshakes_failed() const { return handshakes_failed_.load(); }
  size_t app_bytes() const { return app_bytes_.load(); }  // bytes received after a handshake
  // The TLS server name (SNI) of the last completed handshake, "" when the client sent none.
  std::string last_sni() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return last_sni_;
  }
  size_t request_count() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_.size();
  }
  testsrv::Request last() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_.empty() ? testsrv::Request() : requests_.back();
  }
  // Waits (up to `limit`) until every accepted connection has been handled.
  bool idle(std::chrono::milliseconds limit = std::chrono::milliseconds(5000)) const {
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      if (finished_.load() == connections_.load()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return false;
  }

 private:
  SSL_CTX* make_ctx(const Identity& identity) const {
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == nullptr || SSL_CTX_use_certificate(ctx, identity.cert.get()) != 1 ||
        SSL_CTX_use_PrivateKey(ctx, identity.key.get()) != 1) {
      std::fprintf(stderr, "tls_server: SSL_CTX setup failed\n");
      std::abort();
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (options_.max_version != 0) SSL_CTX_set_max_proto_version(ctx, options_.max_version);
    for (const Identity& extra : options_.extra_chain) {
      X509_up_ref(extra.cert.get());
      SSL_CTX_add_extra_chain_cert(ctx, extra.cert.get());
    }
    return ctx;
  }

  void accept_loop() {
    block_sigpipe_in_this_thread();  // inherited by the connection threads
    while (!stopping_) {
      pollfd p{listener_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      int s = ::accept(listener_, nullptr, nullptr);
      if (s < 0) continue;
      ++connections_;
      std::lock_guard<std::mutex> lock(mutex_);
      workers_.emplace_back([this, s] { serve(s); });
    }
  }

  // Polls in short slices; false when the server is stopping or the socket failed.
  bool wait_for(int fd, short events) {
    while (!stopping_) {
      pollfd p{fd, events, 0};
      int r = ::poll(&p, 1, 20);
      if (r > 0) return true;
      if (r < 0) return false;
    }
    return false;
  }

  bool wait_ssl(SSL* ssl, int fd, int ret) {
    int err = SSL_get_error(ssl, ret);
    if (err == SSL_ERROR_WANT_READ) return wait_for(fd, POLLIN);
    if (err == SSL_ERROR_WANT_WRITE) return wait_for(fd, POLLOUT);
    return false;
  }

  bool read_some(SSL* ssl, int fd, std::string& data) {
    char buf[4096];
    for (;;) {
      int n = SSL_read(ssl, buf, sizeof buf);
      if (n > 0) {
        app_bytes_ += static_cast<size_t>(n);
        data.append(buf, static_cast<size_t>(n));
        return true;
      }
      if (!wait_ssl(ssl, fd, n)) return false;
    }
  }

  bool write_all(SSL* ssl, int fd, const char* data, size_t n) {
    while (n > 0) {
      int w = SSL_write(ssl, data, static_cast<int>(n));
      if (w > 0) {
        data += w;
        n -= static_cast<size_t>(w);
        continue;
      }
      if (!wait_ssl(ssl, fd, w)) return false;
    }
    return true;
  }

  bool pause(int ms) {
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (std::chrono::steady_clock::now() < end) {
      if (stopping_) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return stopping_.load();
  }

  void serve(int fd) {
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
    SSL* ssl = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ssl = SSL_new(ctx_);
    }
    SSL_set_fd(ssl, fd);
    bool ok = false;
    for (;;) {
      int r = SSL_accept(ssl);
      if (r == 1) {
        ok = true;
        break;
      }
      if (!wait_ssl(ssl, fd, r)) break;
    }
    ERR_clear_error();
    if (!ok) {
      ++handshakes_failed_;
    } else {
      ++handshakes_ok_;
      {
        const char* sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
        std::lock_guard<std::mutex> lock(mutex_);
        last_sni_ = sni != nullptr ? sni : "";
      }
      if (options_.close_after_handshake) ::shutdown(fd, SHUT_RDWR);
      else handle(ssl, fd);
    }
    SSL_free(ssl);
    ::shutdown(fd, SHUT_RDWR);
    ::close(fd);
    ++finished_;
  }

  void handle(SSL* ssl, int fd) {
    std::string data;
    size_t head_end;
    while ((head_end = data.find("\r\n\r\n")) == std::string::npos)
      if (!read_some(ssl, fd, data)) return;
    testsrv::Request req;
    testsrv::parse_request_head(data.substr(0, head_end), req);
    size_t length = req.has_header("Content-Length") ? std::strtoul(req.header("Content-Length").c_str(), nullptr, 10) : 0;
    std::string body = data.substr(head_end + 4);
    while (body.size() < length) {
      std::string more;
      if (!read_some(ssl, fd, more)) return;
      body += more;
    }
    req.body = body;
    req.raw = data.substr(0, head_end + 4) + body;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      requests_.push_back(req);
    }
    testsrv::Reply reply = handler_(req);
    if (reply.delay_ms > 0 && pause(reply.delay_ms)) return;
    if (reply.hang) {
      while (!pause(50)) {
      }
      return;
    }
    if (reply.close_now) return;
    write_all(ssl, fd, reply.raw.data(), reply.raw.size());
    SSL_shutdown(ssl);
  }

  Handler handler_;
  Options options_;
  SSL_CTX* ctx_ = nullptr;  // guarded by mutex_ (present() replaces it)
  int listener_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<size_t> connections_{0}, finished_{0}, handshakes_ok_{0}, handshakes_failed_{0}, app_bytes_{0};
  std::thread acceptor_;
  mutable std::mutex mutex_;
  std::vector<std::thread> workers_;
  std::vector<testsrv::Request> requests_;
  std::string last_sni_;
};

// A port on 127.0.0.1 that nothing listens on (bound, read back, closed).
inline uint16_t closed_port() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(s, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(s);
  return ntohs(addr.sin_port);
}

// A listener on 127.0.0.1 port 0 that never accepts: the kernel completes the TCP
// connect, then nothing ever answers (a peer stuck before the TLS handshake).
class SilentListener {
 public:
  SilentListener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd_, 16) != 0) std::abort();
    socklen_t len = sizeof addr;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
  }
  ~SilentListener() { ::close(fd_); }
  SilentListener(const SilentListener&) = delete;
  SilentListener& operator=(const SilentListener&) = delete;
  std::string url() const { return "https://127.0.0.1:" + std::to_string(port_) + "/token"; }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

}  // namespace tlssrv
