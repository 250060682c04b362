// A fake Azure Arc agent on loopback: leg 1 (no Authorization) answers 401 with a
// WWW-Authenticate challenge naming a key file in a fresh temporary directory, leg 2 (with
// Authorization) answers a token or whatever the test says. Include after
// managed_identity.hpp, compiled with arc_token_dir.hpp included first.
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "arc_token_dir.hpp"
#include "cache_support.hpp"
#include "test_support.hpp"

namespace support {

class ArcAgent {
 public:
  using Handler = std::function<testsrv::Reply(const testsrv::Request&)>;

  struct Options {
    std::string key = "arc-key-6b1f0d";  // written to <dir>/agent.key at construction
    // Leg 2 whose Authorization is not "Basic <key>": 401 {"error":"bad key"} (before `leg2`
    // runs), as a real agent refuses a wrong key. Off: every leg 2 reaches `leg2`.
    bool check_key = false;
  };

  CleanEnv env;
  TempDir dir{"mi-arc-test"};
  std::string key;
  bool check_key;
  std::string realm;                      // the WWW-Authenticate value; default Basic realm=<dir>/agent.key
  std::function<void()> before_challenge;  // runs just before the 401 goes out
  Handler leg2;                            // default: an IMDS-shaped body with the token "arc-token"
  std::atomic<int> leg1_count{0}, leg2_count{0};

 private:
  mutable std::mutex mutex_;  // before the server, whose thread uses them
  std::vector<std::string> authorizations_;

 public:
  testsrv::Server server;

  ArcAgent() : ArcAgent(Options()) {}
  explicit ArcAgent(Options options)
      : key(std::move(options.key)),
        check_key(options.check_key),
        server([this](const testsrv::Request& r) { return answer(r); }) {
    set_arc_token_dir(dir.path);
    realm = "Basic realm=" + dir.path + "/agent.key";
    write_key(key);
    set_env("IDENTITY_ENDPOINT", server.url());
    set_env("IMDS_ENDPOINT", server.base());
    fresh_cache();
  }
  ArcAgent(const ArcAgent&) = delete;
  ArcAgent& operator=(const ArcAgent&) = delete;

  // Replaces <dir>/agent.key (the bytes exactly as given).
  void write_key(const std::string& content) const { write_file(dir.path + "/agent.key", content); }

  // Every Authorization value leg 2 received, in order.
  std::vector<std::string> authorizations() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return authorizations_;
  }
  std::string last_authorization() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return authorizations_.empty() ? std::string() : authorizations_.back();
  }

 private:
  testsrv::Reply answer(const testsrv::Request& r) {
    if (!r.has_header("Authorization")) {
      ++leg1_count;
      if (before_challenge) before_challenge();
      return testsrv::Reply::http(401, "", {{"WWW-Authenticate", realm}});
    }
    ++leg2_count;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      authorizations_.push_back(r.header("Authorization"));
    }
    if (check_key && r.header("Authorization") != "Basic " + key) return testsrv::Reply::http(401, "{\"error\":\"bad key\"}");
    if (leg2) return leg2(r);
    return testsrv::Reply::json(imds_body("arc-token"));
  }
};

}  // namespace support
