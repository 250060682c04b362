// The client: options, the retry loop (docs/protocol.md §8), turning responses into tokens
// or errors (§5), the Azure Arc legs (§3), and AcquireToken's use of the cache
// (§6): hit, proactive refresh, coalesced miss, claims bypass.
#pragma once
#include "cache.hpp"
#include "context.hpp"
#include "curl.hpp"
#include "response.hpp"
#include "socket.hpp"
#include "sources.hpp"

namespace mi {
inline namespace v1 {
namespace detail {
struct ClientConfig {
  std::shared_ptr<HttpClient> http;  // null: the built-in transport for the source
  bool retry = true;
  int max_retries = -1;              // -1: the source's default
  std::vector<std::string> capabilities;
  std::function<void(LogLevel, std::string_view)> logger;
  Millis connect_timeout{5000};
  Millis attempt_timeout{30000};
  std::function<SysClock::time_point()> clock;
  std::function<void(Millis)> sleep;
  std::string ca_file;               // WithCAFile: extra trust anchors for chain-validated HTTPS
};

struct AcquireConfig {
  std::string claims;
};

using LogLines = std::vector<std::pair<LogLevel, std::string>>;

struct ClientState {
  Source source = Source::DefaultToIMDS;
  ID id;
  ClientConfig config;
  std::shared_ptr<HttpClient> transport;  // null only for an https source built without libcurl
  std::unique_ptr<const PinnedEndpoint> pinned;  // TlsMode::pinned: the endpoint and pin as read at New
  std::unique_ptr<const WorkloadSetup> workload;  // workload identity: its inputs as read at New
  // The ID value the cache keys on: id.value(), except for workload identity, where the
  // identity is the client ID and tenant read at New (a system-assigned ID has no value of
  // its own), so clients made under different variables never share a token.
  std::string cache_id;

  static Client make_client(std::shared_ptr<ClientState> state) { return Client(std::move(state)); }

  SysClock::time_point now() const { return config.clock ? config.clock() : SysClock::now(); }
  // For the cache-hit check only, where a few milliseconds do not matter.
  SysClock::time_point hit_now() const { return config.clock ? config.clock() : coarse_now(); }

  // Emits one line now. A logger that throws is ignored: a failing log sink must not fail
  // the call, nor unwind through the cache.
  void log(LogLevel level, std::string_view message) const noexcept {
    if (!config.logger) return;
#if MI_DETAIL_EXCEPTIONS
    try {
      config.logger(level, message);
    } catch (...) {
    }
#else
    config.logger(level, message);
#endif
  }
  // Holds a line back until emit(): used while this thread leads a request others may wait
  // for, or holds a refresh, so that a logger may itself call AcquireToken for the same key.
  void defer(LogLines& lines, LogLevel level, std::string message) const {
    if (config.logger) lines.emplace_back(level, std::move(message));
  }
  void emit(const LogLines& lines) const noexcept {
    for (const auto& line : lines) log(line.first, line.second);
  }
};

namespace {  // internal linkage: nothing below is visible outside this translation unit

// ---- retry policy (docs/protocol.md §8) -----------------------------------------------------------

// The source's retry class (SourceSpec::retry) decides the next three.
bool retryable_status(Source source, int status) {
  const RetryClass& rc = source_spec(source).retry;
  if (status == 404) return rc.not_found;
  if (status == 408 || status == 429) return true;
  if (status == 410) return rc.imds_updating;
  if (rc.every_5xx) return status >= 500 && status <= 599;
  return status == 500 || status == 502 || status == 503 || status == 504;
}

// The one rule for what may succeed later: Error::retryable() and the retry loop both use it.
bool retryable_outcome(Source source, Errc code, int status) noexcept {
  if (code == Errc::network || code == Errc::timeout) return true;
  return code == Errc::http_status && retryable_status(source, status);
}

// How many retries may follow a failure with this status (0 = transport error).
int retry_limit(const ClientState& st, int status) {
  if (!st.config.retry) return 0;
  if (st.config.max_retries >= 0) return st.config.max_retries;
  if (status == 410 && source_spec(st.source).retry.imds_updating) return 7;  // IMDS is being updated
  return 3;
}

// The wait before retry number `retry` (0-based), before Retry-After and jitter.
Millis backoff(Source source, int retry, int status) {
  const RetryClass& rc = source_spec(source).retry;
  if (status == 410 && rc.imds_updating) return Millis(10000);
  if (!rc.exponential) return Millis(1000);
  return Millis(1000LL << std::min(retry, 6));  // 1 s, 2 s, 4 s, ...
}

constexpr Millis kMaxRetryWait{60000};

// Parses an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") as Retry-After allows.
MI_DETAIL_COLD bool parse_http_date(std::string_view text, SysClock::time_point& out) {
  text = trim(text);
  size_t comma = text.find(',');
  if (comma == std::string_view::npos) return false;
  std::string_view rest = trim(text.substr(comma + 1));
  static const char* months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  // "06 Nov 1994 08:49:37 GMT"
  if (rest.size() != 24 || rest[2] != ' ' || rest[6] != ' ' || rest[11] != ' ' || rest[14] != ':' ||
      rest[17] != ':' || rest.substr(20) != " GMT")
    return false;
  int64_t day = 0, year = 0, hour = 0, minute = 0, second = 0;
  if (!parse_int64(rest.substr(0, 2), day) || !parse_int64(rest.substr(7, 4), year) ||
      !parse_int64(rest.substr(12, 2), hour) || !parse_int64(rest.substr(15, 2), minute) ||
      !parse_int64(rest.substr(18, 2), second))
    return false;
  unsigned month = 0;
  for (unsigned i = 0; i < 12; ++i)
    if (rest.substr(3, 3) == months[i]) month = i + 1;
  if (month == 0 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60) return false;
  int64_t days = days_from_civil(year, month, static_cast<unsigned>(day));
  // A year the clock cannot hold (before 1678 or after 2262 with a nanosecond clock) is
  // not a date the server can mean: ignored, like any other unusable value.
  return from_unix_seconds(days * 86400 + hour * 3600 + minute * 60 + second, out);
}

// Retry-After as a wait from `now`: seconds or an HTTP-date; false when absent or unusable.
MI_DETAIL_COLD bool retry_after(const HttpResponse& response, SysClock::time_point now, Millis& wait) {
  for (const auto& h : response.headers) {
    if (!iequals(h.first, "Retry-After")) continue;
    std::string_view value = trim(h.second);
    int64_t seconds = 0;
    if (parse_int64(value, seconds)) {
      wait = seconds > kMaxRetryWait.count() / 1000 ? kMaxRetryWait : Millis(seconds * 1000);
      return true;
    }
    SysClock::time_point when;
    if (parse_http_date(value, when)) {
      // when - now could overflow (a date near one end of the clock, `now` near the
      // other): compared in whole seconds first, anything past the cap waits the cap.
      if (when <= now) wait = Millis(0);
      else if (to_unix_seconds(when) - to_unix_seconds(now) > kMaxRetryWait.count() / 1000) wait = kMaxRetryWait;
      else wait = std::chrono::duration_cast<Millis>(when - now);
      return true;
    }
    return false;
  }
  return false;
}

// ---- errors from responses ----------------------------------------------------------------

// Text from the endpoint with every control character -- C0, DEL, and C1 (U+0080..U+009F,
// C2 80..C2 9F in UTF-8) -- shown as one space, everything else as it is.
MI_DETAIL_COLD std::string fold_controls(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == 0xC2 && i + 1 < text.size()) {
      unsigned char next = static_cast<unsigned char>(text[i + 1]);
      if (next >= 0x80 && next <= 0x9F) {
        out.push_back(' ');
        ++i;
        continue;
      }
    }
    out.push_back(c < 0x20 || c == 0x7f ? ' ' : static_cast<char>(c));
  }
  return out;
}

// Replaces every secret in `text` so no message can carry one. Endpoint text is folded
// (fold_controls) before it gets here, so each secret is also looked for as folded: an
// echo with control characters in place of some characters (its spaces, or controls the
// secret itself holds) folds to that form.
MI_DETAIL_COLD std::string redact(std::string text, const std::vector<std::string>& secrets) {
  const std::string_view mark = "[redacted]";
  auto replace_all = [&text, mark](std::string_view secret) {
    for (size_t pos = text.find(secret); pos != std::string::npos; pos = text.find(secret, pos + mark.size()))
      text.replace(pos, secret.size(), mark);
  };
  for (const std::string& secret : secrets) {
    if (secret.empty()) continue;
    replace_all(secret);
    std::string folded = fold_controls(secret);
    if (folded != secret && !trim(folded).empty()) replace_all(folded);
  }
  return text;
}

// At most `limit` bytes (limit > 3): a longer text is cut on a UTF-8 character boundary,
// never inside a character, and ends in "...".
MI_DETAIL_COLD std::string body_excerpt(std::string text, size_t limit) {
  if (text.size() <= limit) return text;
  size_t cut = limit - 3;
  // Back off over continuation bytes (10xxxxxx) to the start of the character cut into.
  for (int k = 0; k < 3 && cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80; ++k) --cut;
  text.resize(cut);
  text += "...";
  return text;
}

// The source's own hints (SourceSpec::hint_*) come first, then the generic ones.
std::string status_hint(Source source, int status, bool json_body) {
  const SourceSpec& spec = source_spec(source);
  if (status >= 300 && status < 400)
    return "the endpoint answered with a redirect, which is never followed; a managed identity endpoint does not "
           "redirect, so a proxy may be intercepting the request";
  if (!json_body && (status == 403 || status == 502 || status == 503 || status == 504) &&
      spec.hint_not_json != nullptr)
    return spec.hint_not_json;
  switch (status) {
    case 400: return spec.hint_400 != nullptr ? spec.hint_400 : "check the resource and the identity's ID";
    case 401:
    case 403:
      if (spec.hint_401_403 != nullptr) return spec.hint_401_403;
      return "the endpoint refused the request; check that this process may use the resource's managed identity";
    case 404:
      return "the identity was not found or is still being assigned; check the identity's ID and that it is "
             "assigned to this resource, then try again";
    case 410: return "IMDS is being updated; try again in a minute";
    case 429: return "the endpoint is throttling requests; try again later (tokens are cached, so keep one client)";
    default: break;
  }
  if (status >= 500) return "the endpoint failed; try again later";
  return "check the resource and the identity";
}

// Text from the endpoint made safe for a message or an mi::Error field: control characters
// shown as spaces, then secrets replaced (so folding cannot rebuild one), then at most 512
// bytes (a hostile endpoint may send megabytes). Redacting before the cut means a secret
// that straddles the limit leaves no piece behind.
MI_DETAIL_COLD std::string endpoint_text(std::string_view text, const std::vector<std::string>& secrets) {
  return body_excerpt(std::string(trim(redact(fold_controls(text), secrets))), 512);
}

MI_DETAIL_COLD Error http_status_error(const ClientState& st, const HttpResponse& response, int attempts,
                                       const std::vector<std::string>& secrets) {
  ErrorBody details = parse_error_body(response.body);
  std::string code = endpoint_text(details.code, secrets);
  std::string description = endpoint_text(details.description, secrets);
  std::string message = cat({source_label(st.source), " answered HTTP ", num(response.status)});
  if (!code.empty() || !description.empty()) {
    message += cat({" (", code, !code.empty() && !description.empty() ? ": " : "", description, ")"});
  } else {
    // A body of any other shape (other JSON, HTML, text) is the only clue: show an excerpt.
    std::string excerpt = endpoint_text(response.body, secrets);
    if (!excerpt.empty()) message += cat({" (\"", excerpt, "\")"});
  }
  if (attempts > 1) message += cat({" after ", num(attempts), " attempts"});
  const SourceSpec& spec = source_spec(st.source);
  const char* body_hint = spec.hint_for_body != nullptr ? spec.hint_for_body(details) : nullptr;
  message += cat({"; ", body_hint != nullptr ? body_hint : status_hint(st.source, response.status, details.json)});
  Error e = ErrorAccess::make(Errc::http_status, redact(message, secrets), st.source);
  ErrorAccess::set_status(e, response.status);
  ErrorAccess::set_server_details(e, std::move(code), std::move(description),
                                  endpoint_text(details.correlation_id, secrets));
  return e;
}

// ---- sending with retries -----------------------------------------------------------------

MI_DETAIL_COLD std::string last_status_note(int status) {
  return status == 0 ? std::string() : cat({" (the last answer was HTTP ", num(status), ")"});
}

// The retry loop's rare paths, out of line: the context stopped, the transport failed for
// good, a retry is logged, the deadline would pass before the next retry.
MI_DETAIL_COLD Result<HttpResponse> retry_stopped(const ClientState& st, ContextStatus cs, int last_status) {
  Error e = context_error(cs, {"waiting for ", source_label(st.source), last_status_note(last_status)});
  ErrorAccess::set_source(e, st.source);
  return e;
}

MI_DETAIL_COLD Result<HttpResponse> transport_failure(const ClientState& st, const Error& error,
                                                      const std::vector<std::string>& secrets, int attempts) {
  Error e = error;
  ErrorAccess::set_source(e, st.source);
  ErrorAccess::set_message(e, redact(e.message(), secrets));
  if (attempts > 1) ErrorAccess::set_message(e, cat({e.message(), " (after ", num(attempts), " attempts)"}));
  return e;
}

MI_DETAIL_COLD void log_retry(const ClientState& st, LogLines& logs, const Error* error,
                              const std::vector<std::string>& secrets, int status, Millis wait) {
  if (error != nullptr)
    st.defer(logs, LogLevel::Warning,
             cat({source_label(st.source), " request failed: ", redact(error->message(), secrets), "; retrying in ",
                  num(wait.count()), " ms"}));
  else
    st.defer(logs, LogLevel::Warning,
             cat({source_label(st.source), " answered HTTP ", num(status), "; retrying in ", num(wait.count()),
                  " ms"}));
}

#if MI_DETAIL_EXCEPTIONS
MI_DETAIL_COLD Result<HttpResponse> transport_threw(const char* what) {
  return failure<HttpResponse>(Errc::network, {"the HTTP client threw an exception",
                                               what != nullptr ? ": " : "",
                                               what != nullptr ? body_excerpt(what, 200) : std::string()});
}
#endif

// One attempt. An exception from a custom HttpClient must not unwind through the retry loop
// and the cache (a request in flight would never land): it is a network error, retried as one.
Result<HttpResponse> call_transport(const ClientState& st, const Context& ctx, const HttpRequest& request) {
#if MI_DETAIL_EXCEPTIONS
  try {
    return st.transport->Do(ctx, request);
  } catch (const std::exception& e) {
    return transport_threw(e.what());
  } catch (...) {
    return transport_threw(nullptr);
  }
#else
  return st.transport->Do(ctx, request);
#endif
}

MI_DETAIL_COLD Result<HttpResponse> retry_deadline(const ClientState& st, int last_status) {
  Error e = make_error(Errc::timeout, cat({"the context's deadline would pass before the next retry to ",
                                           source_label(st.source), last_status_note(last_status),
                                           "; give the call more time (mi::Context::WithTimeout)"}));
  ErrorAccess::set_source(e, st.source);
  ErrorAccess::set_status(e, last_status);
  return e;
}

// Sends `request` until it gets a final answer (docs/protocol.md §8): transport errors and the
// source's retryable statuses are retried with backoff, honouring Retry-After, within
// the context (unless `one_attempt`). Any status that is not retried is returned as a value.
Result<HttpResponse> send_with_retries(const ClientState& st, const Context& ctx, const HttpRequest& request,
                                       const std::vector<std::string>& secrets, bool one_attempt, int& attempts,
                                       LogLines& logs) {
  attempts = 0;
  int last_status = 0;
  for (int retries = 0;; ++retries) {
    ContextStatus cs = context_status(ctx);
    if (cs != ContextStatus::ok) return retry_stopped(st, cs, last_status);
    ++attempts;
    Context attempt_ctx = ctx.WithTimeout(st.config.attempt_timeout);
    Result<HttpResponse> result = call_transport(st, attempt_ctx, request);
    Millis wait(0);
    if (!result) {
      cs = context_status(ctx);
      if (cs != ContextStatus::ok) return retry_stopped(st, cs, last_status);
      const Error& error = result.error();
      if (one_attempt || !retryable_outcome(st.source, error.code(), error.status_code()) ||
          retries >= retry_limit(st, 0))
        return transport_failure(st, error, secrets, attempts);
      wait = backoff(st.source, retries, 0);
      log_retry(st, logs, &error, secrets, 0, wait);
    } else {
      last_status = result->status;
      if (one_attempt || !retryable_outcome(st.source, Errc::http_status, last_status) ||
          retries >= retry_limit(st, last_status))
        return result;
      wait = backoff(st.source, retries, last_status);
      Millis after(0);
      if (retry_after(*result, st.now(), after) && after > wait) wait = after;
      log_retry(st, logs, nullptr, secrets, last_status, wait);
    }
    // Up to +20 % jitter so that many clients do not retry in lockstep; never past 60 s.
    wait += Millis(static_cast<int64_t>(random_u64() % static_cast<uint64_t>(wait.count() / 5 + 1)));
    if (wait > kMaxRetryWait) wait = kMaxRetryWait;
    if (ctx.deadline() != SteadyClock::time_point::max() && SteadyClock::now() + wait >= ctx.deadline())
      return retry_deadline(st, last_status);
    if (st.config.sleep) {
      st.config.sleep(wait);
    } else {
      sleep_for(ctx, wait);
    }
  }
}

// ---- one acquisition against the endpoint ---------------------------------------------------

// An acquisition's failure: the source set, and the request id as correlation id if the
// endpoint gave none. `prefix` (if any) goes before the message.
MI_DETAIL_COLD Result<AuthResult> finish_error(const ClientState& st, const Error& error, const std::string& request_id,
                                               bool prefix_source = false) {
  Error e = error;
  ErrorAccess::set_source(e, st.source);
  if (prefix_source) ErrorAccess::set_message(e, cat({source_label(st.source), ": ", e.message()}));
  if (e.correlation_id().empty() && !request_id.empty()) ErrorAccess::set_correlation_id(e, request_id);
  return e;
}

Error no_transport_error(const SourceSpec& spec) {
  return make_error(Errc::tls, cat({spec.label,
                                    "'s endpoint is HTTPS, and this program was built without HTTPS support: define "
                                    "MI_USE_CURL where MI_IMPLEMENTATION is defined, with the libcurl and OpenSSL "
                                    "headers installed (libcurl is loaded when first needed; CMake: -DMI_USE_CURL=ON)"}));
}

// Fetches a token from the endpoint (no cache read). `cached_token` is the token cached for
// this key, if any (Service Fabric's revocation hash with claims). Log lines go to `logs`.
Result<AuthResult> fetch_token(const ClientState& st, const Context& ctx, std::string_view resource,
                               const AcquireConfig& options, const std::string* cached_token, bool one_attempt,
                               LogLines& logs) {
  const SourceSpec& spec = source_spec(st.source);
  // Sent by the sources that take one; the same on this acquisition's retries.
  const std::string request_id = spec.request_id_header != nullptr ? uuid4() : std::string();
  Result<BuiltRequest> built = build_request(spec, st.id, resource,
                                             RequestExtras{request_id, options.claims, cached_token,
                                                           &st.config.capabilities, st.workload.get()},
                                             st.pinned.get());
  if (!built) return finish_error(st, built.error(), request_id);
  // An endpoint that echoes the token we hold (claims, refresh) must not get it into a message.
  if (cached_token != nullptr) built->secrets.push_back(*cached_token);
  if (!st.transport) return finish_error(st, no_transport_error(spec), request_id);

  int attempts = 0;
  Result<HttpResponse> response =
      send_with_retries(st, ctx, built->request, built->secrets, one_attempt, attempts, logs);
  if (response && spec.answer_challenge != nullptr) {
    // Azure Arc: leg 1 answered; a 401 challenge is answered by leg 2 (docs/protocol.md §3).
    Result<bool> again = spec.answer_challenge(*response, *built);
    if (!again) return finish_error(st, again.error(), request_id);
    if (*again) response = send_with_retries(st, ctx, built->request, built->secrets, one_attempt, attempts, logs);
  }
  if (!response) return finish_error(st, response.error(), request_id);
  if (response->status != 200 && response->status != 202)
    return finish_error(st, http_status_error(st, *response, attempts, built->secrets), request_id);

  SysClock::time_point now = st.now();
  Result<TokenResponse> parsed = parse_token_response(response->body, now);
  if (!parsed) return finish_error(st, parsed.error(), request_id, true);
  if (spec.confirm_token != nullptr) {
    Result<bool> confirmed = spec.confirm_token(st.id, parsed->echo);
    if (!confirmed) return finish_error(st, confirmed.error(), request_id);
  }
  AuthResult result;
  set_token(result, std::move(parsed->token));
  result.resource.assign(resource);
  result.token_source = TokenSource::IdentityProvider;
  st.defer(logs, LogLevel::Info,
           cat({"acquired a token for '", resource, "' from ", source_label(st.source), ", expiring in ",
                num(std::chrono::duration_cast<std::chrono::seconds>(result.expires_on - now).count()), " s"}));
  return result;
}

// Caches a fetched token; a result that is not cached only costs a log line.
void store_token(const ClientState& st, const CacheKeyView& key, const AuthResult& result, LogLines& logs) {
  Token token{result.access_token, result.token_type, result.expires_on, result.refresh_on};
  if (!TokenCache::instance().store(key, token, st.now()))
    st.defer(logs, LogLevel::Warning, "the token expires within 5 minutes, so it is not cached");
}

std::string_view trim_default_scope(std::string_view resource) {
  const std::string_view suffix = "/.default";
  if (ends_with(resource, suffix)) resource.remove_suffix(suffix.size());
  return resource;
}

// Lands the leader's flight on every path. If user code (a sleep or clock hook) throws, the
// flight is abandoned instead, and its waiters try themselves rather than wait for ever.
class FlightLanding {
 public:
  FlightLanding(TokenCache& cache, const std::shared_ptr<Flight>& flight) : cache_(cache), flight_(flight) {}
  FlightLanding(const FlightLanding&) = delete;
  FlightLanding& operator=(const FlightLanding&) = delete;
  ~FlightLanding() {
    if (!landed_) cache_.abandon(flight_);
  }
  void land(const Result<AuthResult>& outcome, bool leader_stopped) {
    cache_.land(flight_, outcome, leader_stopped);  // if it cannot (no memory), the destructor abandons
    landed_ = true;
  }

 private:
  TokenCache& cache_;
  const std::shared_ptr<Flight>& flight_;
  bool landed_ = false;
};

// Ends a proactive refresh on every path; if user code throws, as a failure (so the key
// cools down and is refreshed again later).
class RefreshClaim {
 public:
  RefreshClaim(TokenCache& cache, const CacheKeyView& key, SysClock::time_point now)
      : cache_(cache), key_(key), now_(now) {}
  RefreshClaim(const RefreshClaim&) = delete;
  RefreshClaim& operator=(const RefreshClaim&) = delete;
  ~RefreshClaim() {
    if (!ended_) cache_.end_refresh(key_, true, now_);
  }
  std::chrono::seconds end(bool failed, SysClock::time_point now) {
    ended_ = true;
    return cache_.end_refresh(key_, failed, now);
  }

 private:
  TokenCache& cache_;
  const CacheKeyView& key_;
  SysClock::time_point now_;
  bool ended_ = false;
};

// A hit past its refresh time whose caller won the refresh (docs/protocol.md §6). A valid token is in
// hand, so one attempt without retry waits; if it fails, the cached token is returned and
// the key cools down before its next proactive attempt.
MI_DETAIL_NOINLINE Result<AuthResult> refresh_token(const ClientState& st, const Context& ctx, const CacheKeyView& key,
                                 const AcquireConfig& options, AuthResult cached, SysClock::time_point now) {
  TokenCache& cache = TokenCache::instance();
  RefreshClaim claim(cache, key, now);
  LogLines logs;
  Result<AuthResult> result = fetch_token(st, ctx, key.resource, options, &cached.access_token, true, logs);
  if (result) store_token(st, key, *result, logs);
  std::chrono::seconds cool_down = claim.end(!result, result ? now : st.now());
  st.emit(logs);
  if (result) return result;
  st.log(LogLevel::Warning, cat({"proactive token refresh failed, using the cached token until it expires (next "
                                 "refresh attempt in ",
                                 num(cool_down.count()), " s): ", result.error().message()}));
  cached.resource.assign(key.resource);
  return Result<AuthResult>(std::move(cached));
}

Result<AuthResult> acquire(const ClientState& st, const Context& ctx, std::string_view requested,
                           const AcquireConfig& options) {
  std::string_view resource = trim_default_scope(requested);
  const CacheKeyView key{st.source, st.id.kind(), st.cache_id, resource};
  TokenCache& cache = TokenCache::instance();

  // Claims: always fetch (docs/protocol.md §7), never coalesce; the new token is cached.
  if (!options.claims.empty()) {
    Token cached;
    bool have = cache.peek(key, cached);
    LogLines logs;
    Result<AuthResult> result =
        fetch_token(st, ctx, resource, options, have ? &cached.access_token : nullptr, false, logs);
    if (result) store_token(st, key, *result, logs);
    st.emit(logs);
    return result;
  }

  AuthResult cached;
  cached.token_source = TokenSource::Cache;
  const SysClock::time_point now = st.hit_now();
  switch (cache.find(key, now, cached)) {
    case TokenCache::Hit::fresh:
      cached.resource.assign(resource);
      return Result<AuthResult>(std::move(cached));
    case TokenCache::Hit::refresh:
      // This caller refreshes; the others keep getting the cached token meanwhile.
      return refresh_token(st, ctx, key, options, std::move(cached), now);
    case TokenCache::Hit::miss: break;
  }

  // A miss: one request per key; concurrent callers wait for it (docs/protocol.md §6).
  for (;;) {
    bool leader = false;
    std::shared_ptr<Flight> flight = cache.join_or_lead(key, st.now(), leader, cached);
    if (!flight) {
      cached.resource.assign(resource);
      return Result<AuthResult>(std::move(cached));
    }
    if (leader) {
      // Lines are logged only once the flight has landed: a logger that calls AcquireToken
      // for this key would otherwise wait on its own thread's flight.
      FlightLanding landing(cache, flight);
      LogLines logs;
      Result<AuthResult> result = fetch_token(st, ctx, resource, options, nullptr, false, logs);
      if (result) store_token(st, key, *result, logs);
      landing.land(result, context_status(ctx) != ContextStatus::ok);
      st.emit(logs);
      return result;
    }
    std::unique_lock<std::mutex> lock(flight->mutex);
    while (!flight->done) {
      ContextStatus cs = context_status(ctx);
      if (cs != ContextStatus::ok) {
        Error e = context_error(cs, {"waiting for another caller's request to ", source_label(st.source)});
        ErrorAccess::set_source(e, st.source);
        return e;
      }
      flight->done_cv.wait_for(lock, time_left(ctx, kContextSlice));
    }
    if (flight->leader_stopped) continue;  // its context ended, not the endpoint: try ourselves
    Result<AuthResult> shared = *flight->outcome;
    if (shared) shared->resource.assign(resource);
    return shared;
  }
}

}  // namespace
}  // namespace detail

// ---- public functions ---------------------------------------------------------------------

namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

// A pinned source (docs/protocol.md §4): the endpoint and the thumbprint are fixed now, and
// the Secret header may only go through a transport that checks the pin during the
// handshake (fail closed, as MSAL Go refuses an HTTP client it cannot pin).
Result<bool> choose_pinned_transport(const SourceSpec& spec, ClientState& st) {
  Result<PinnedEndpoint> pinned = pinned_endpoint(spec);
  if (!pinned) return pinned.error();
  if (st.config.http && !st.config.http->PinsServerCertificate())
    return ErrorAccess::make(
        Errc::invalid_argument,
        cat({"mi::WithHTTPClient: on ", spec.label, " the transport must check the endpoint's certificate against ",
             spec.pin_variable,
             " (HttpRequest::pinned_sha1) during the TLS handshake, and this one does not say so (its "
             "PinsServerCertificate() is false); implement the check and return true from PinsServerCertificate(), "
             "or leave out WithHTTPClient to use the built-in libcurl transport"}),
        spec.source);
  if (st.config.http) {
    st.transport = st.config.http;
  } else {
#if MI_DETAIL_CURL
    st.transport = std::make_shared<CurlTransport>(pinned->sha1_bytes, st.config.connect_timeout);
#endif
  }
  st.pinned.reset(new PinnedEndpoint(std::move(*pinned)));
  return true;
}

#if MI_DETAIL_CURL
// How the built-in transport checks a chain-validated endpoint (docs/protocol.md §12): the
// AKS token proxy against its own CA alone, with its TLS server name and never through an
// HTTP proxy (the proxy would have to reach the server name, which only the cluster knows);
// Entra ID against the system's trust store plus WithCAFile's anchors, through the
// environment's HTTPS_PROXY unless NO_PROXY exempts it, since Entra ID is on the internet.
CurlTrust chain_trust(const ClientState& st) {
  CurlTrust trust;
  const WorkloadSetup* workload = st.workload.get();
  if (workload != nullptr && workload->token_proxy) {
    trust.only_ca_file = workload->proxy_ca_file;
    trust.only_ca_pem = workload->proxy_ca_pem;
    trust.sni_name = workload->sni_name;
  } else {
    trust.extra_ca_file = st.config.ca_file;
    trust.use_proxy = true;
  }
  return trust;
}
#endif

// The transport the source's TLS mode asks for: the user's HttpClient if given (a pinned
// source checks it can pin), else the built-in one. Without libcurl an https source gets
// none, and its requests fail with tls (no_transport_error).
Result<bool> choose_transport(const SourceSpec& spec, ClientState& st) {
  switch (spec.tls) {
    case TlsMode::plain:
      st.transport = st.config.http ? st.config.http : std::make_shared<SocketTransport>(st.config.connect_timeout);
      return true;
    case TlsMode::pinned: return choose_pinned_transport(spec, st);
    case TlsMode::chain_validated:
      st.transport = st.config.http;
#if MI_DETAIL_CURL
      if (!st.transport)
        st.transport = std::make_shared<CurlTransport>(std::string(), st.config.connect_timeout, chain_trust(st));
#endif
      return true;
  }
  return true;
}

// How an option changes the configuration: `apply` takes its fields from the option's `patch`.
using ConfigApply = void (*)(ClientConfig& config, const ClientConfig& patch);

// Every ClientOption holds the same kind of callable (a patch and the plain function that
// applies it), so std::function's machinery is compiled once rather than once per option.
ClientOption patch_option(std::shared_ptr<ClientConfig> patch, ConfigApply apply) {
  return ClientOption([patch = std::move(patch), apply](ClientConfig& c) { apply(c, *patch); });
}

std::shared_ptr<ClientConfig> new_patch() { return std::make_shared<ClientConfig>(); }

}  // namespace
}  // namespace detail

MI_DETAIL_COLD ClientOption WithHTTPClient(std::shared_ptr<HttpClient> client) {
  std::shared_ptr<detail::ClientConfig> patch = detail::new_patch();
  patch->http = std::move(client);
  return detail::patch_option(std::move(patch),
                              [](detail::ClientConfig& c, const detail::ClientConfig& p) { c.http = p.http; });
}
MI_DETAIL_COLD ClientOption WithRetryPolicyDisabled() {
  return detail::patch_option(detail::new_patch(),
                              [](detail::ClientConfig& c, const detail::ClientConfig&) { c.retry = false; });
}
MI_DETAIL_COLD ClientOption WithClientCapabilities(std::vector<std::string> capabilities) {
  std::shared_ptr<detail::ClientConfig> patch = detail::new_patch();
  patch->capabilities = std::move(capabilities);
  return detail::patch_option(std::move(patch), [](detail::ClientConfig& c, const detail::ClientConfig& p) {
    for (const std::string& cap : p.capabilities) {
      std::string_view trimmed = detail::trim(cap);
      if (!trimmed.empty()) c.capabilities.push_back(std::string(trimmed));
    }
  });
}
MI_DETAIL_COLD ClientOption WithLogger(std::function<void(LogLevel, std::string_view)> logger) {
  std::shared_ptr<detail::ClientConfig> patch = detail::new_patch();
  patch->logger = std::move(logger);
  return detail::patch_option(std::move(patch),
                              [](detail::ClientConfig& c, const detail::ClientConfig& p) { c.logger = p.logger; });
}
MI_DETAIL_COLD ClientOption WithCAFile(std::string pem_path) {
  std::shared_ptr<detail::ClientConfig> patch = detail::new_patch();
  patch->ca_file = std::move(pem_path);
  return detail::patch_option(std::move(patch),
                              [](detail::ClientConfig& c, const detail::ClientConfig& p) { c.ca_file = p.ca_file; });
}
MI_DETAIL_COLD AcquireTokenOption WithClaims(std::string claims) {
  return AcquireTokenOption([claims = std::move(claims)](detail::AcquireConfig& c) { c.claims = claims; });
}
MI_DETAIL_COLD ClientOption WithMaxRetries(int retries) {
  std::shared_ptr<detail::ClientConfig> patch = detail::new_patch();
  patch->max_retries = retries;
  return detail::patch_option(std::move(patch), [](detail::ClientConfig& c, const detail::ClientConfig& p) {
    c.max_retries = p.max_retries < 0 ? 0 : p.max_retries;
  });
}
MI_DETAIL_COLD ClientOption WithTimeouts(std::chrono::milliseconds connect, std::chrono::milliseconds attempt) {
  std::shared_ptr<detail::ClientConfig> patch = detail::new_patch();
  patch->connect_timeout = connect;
  patch->attempt_timeout = attempt;
  return detail::patch_option(std::move(patch), [](detail::ClientConfig& c, const detail::ClientConfig& p) {
    if (p.connect_timeout.count() > 0) c.connect_timeout = p.connect_timeout;
    if (p.attempt_timeout.count() > 0) c.attempt_timeout = p.attempt_timeout;
  });
}
MI_DETAIL_COLD ClientOption WithClock(std::function<std::chrono::system_clock::time_point()> now) {
  std::shared_ptr<detail::ClientConfig> patch = detail::new_patch();
  patch->clock = std::move(now);
  return detail::patch_option(std::move(patch),
                              [](detail::ClientConfig& c, const detail::ClientConfig& p) { c.clock = p.clock; });
}
MI_DETAIL_COLD ClientOption WithSleep(std::function<void(std::chrono::milliseconds)> sleep) {
  std::shared_ptr<detail::ClientConfig> patch = detail::new_patch();
  patch->sleep = std::move(sleep);
  return detail::patch_option(std::move(patch),
                              [](detail::ClientConfig& c, const detail::ClientConfig& p) { c.sleep = p.sleep; });
}

Result<Client> New(ID id, const std::vector<ClientOption>& options) {
  auto state = std::make_shared<detail::ClientState>();
  state->source = detail::detect_source();
  const detail::SourceSpec& spec = detail::source_spec(state->source);
  Result<bool> supported = detail::check_identity(spec, id);
  if (!supported) return supported.error();
  if (spec.setup != nullptr) {
    Result<detail::WorkloadSetup> setup = spec.setup(spec, id);
    if (!setup) return setup.error();
    state->workload.reset(new detail::WorkloadSetup(std::move(*setup)));
  }
  state->id = std::move(id);
  state->cache_id = state->workload ? detail::cat({state->workload->client_id, " ", state->workload->url.str()})
                                    : state->id.value();
  for (const ClientOption& option : options) option.apply(state->config);
  Result<bool> transport = detail::choose_transport(spec, *state);
  if (!transport) return transport.error();
  return detail::ClientState::make_client(std::move(state));
}

Result<AuthResult> Client::AcquireToken(const Context& ctx, std::string_view resource) const {
  return detail::acquire(*state_, ctx, resource, detail::AcquireConfig{});
}

Result<AuthResult> Client::AcquireToken(const Context& ctx, std::string_view resource,
                                        const std::vector<AcquireTokenOption>& options) const {
  detail::AcquireConfig config;
  for (const AcquireTokenOption& option : options) option.apply(config);
  return detail::acquire(*state_, ctx, resource, config);
}

Source Client::source() const noexcept { return state_->source; }
const ID& Client::id() const noexcept { return state_->id; }

bool Error::retryable() const noexcept { return detail::retryable_outcome(source_, code_, status_code_); }

}  // namespace v1
}  // namespace mi
