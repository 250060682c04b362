// The client: options, the retry loop (SPEC §8), turning responses into tokens
// or errors (§5), the Azure Arc legs (§3), and AcquireToken's use of the cache
// (§6): hit, proactive refresh, coalesced miss, claims bypass.

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
};

struct AcquireConfig {
  std::string claims;
};

struct ClientState {
  Source source = Source::DefaultToIMDS;
  ID id;
  ClientConfig config;
  std::shared_ptr<HttpClient> transport;  // null only for Service Fabric built without libcurl
  Url fixed_endpoint;                     // Service Fabric: IDENTITY_ENDPOINT as read at New
  bool has_fixed_endpoint = false;

  static Client make_client(std::shared_ptr<ClientState> state) { return Client(std::move(state)); }

  SysClock::time_point now() const { return config.clock ? config.clock() : SysClock::now(); }
  // For the cache-hit check only, where a few milliseconds do not matter.
  SysClock::time_point hit_now() const { return config.clock ? config.clock() : coarse_now(); }
  void log(LogLevel level, const std::string& message) const {
    if (config.logger) config.logger(level, message);
  }
};

// ---- retry policy (SPEC §8) -----------------------------------------------------------

bool retryable_status(Source source, int status) {
  if (source == Source::DefaultToIMDS)
    return status == 404 || status == 408 || status == 410 || status == 429 || (status >= 500 && status <= 599);
  return status == 404 || status == 408 || status == 429 || status == 500 || status == 502 || status == 503 ||
         status == 504;
}

// How many retries may follow a failure with this status (0 = transport error).
int retry_limit(const ClientState& st, int status) {
  if (!st.config.retry) return 0;
  if (st.config.max_retries >= 0) return st.config.max_retries;
  if (st.source == Source::DefaultToIMDS && status == 410) return 7;  // IMDS is being updated
  return 3;
}

// The wait before retry number `retry` (0-based), before Retry-After and jitter.
Millis backoff(Source source, int retry, int status) {
  if (source != Source::DefaultToIMDS) return Millis(1000);
  if (status == 410) return Millis(10000);
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

// Replaces every secret in `text` so no message can carry one.
MI_DETAIL_COLD std::string redact(std::string text, const std::vector<std::string>& secrets) {
  for (const std::string& secret : secrets) {
    if (secret.empty()) continue;
    for (size_t pos = text.find(secret); pos != std::string::npos; pos = text.find(secret, pos + 10))
      text.replace(pos, secret.size(), "[redacted]");
  }
  return text;
}

// A printable excerpt of at most `limit` bytes: control characters become one space.
MI_DETAIL_COLD std::string body_excerpt(std::string_view body, size_t limit) {
  std::string out;
  bool space = false;
  for (char ch : body) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (out.size() >= limit) {
      out += "...";
      break;
    }
    if (c < 0x20 || c == 0x7f) {
      space = !out.empty();
      continue;
    }
    if (space) out.push_back(' ');
    space = false;
    out.push_back(static_cast<char>(c));
  }
  return out;
}

MI_DETAIL_COLD std::string status_hint(Source source, int status, bool json_body) {
  if (status >= 300 && status < 400)
    return "the endpoint answered with a redirect, which is never followed; a managed identity endpoint does not "
           "redirect, so a proxy may be intercepting the request";
  if (!json_body && (status == 403 || status == 502 || status == 503 || status == 504) &&
      source == Source::DefaultToIMDS)
    return "something other than IMDS may have answered (a proxy, or a container runtime such as Docker Desktop); "
           "managed identity works only on the Azure resource itself";
  switch (status) {
    case 400:
      return source == Source::DefaultToIMDS
                 ? "check that the identity is assigned to this VM (for a user-assigned identity, that its ID is "
                   "right) and that the resource is a valid application ID URI"
                 : "check the resource and the identity's ID";
    case 401:
    case 403:
      if (source == Source::AppService || source == Source::ServiceFabric)
        return "the endpoint refused IDENTITY_HEADER; restart the app so it gets a fresh one";
      if (source == Source::AzureML) return "the endpoint refused MSI_SECRET; check the compute's identity setup";
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

// Text from the endpoint made safe for a message: control characters folded to
// spaces, secrets replaced, length capped (a hostile endpoint may send megabytes).
MI_DETAIL_COLD std::string endpoint_text(std::string_view text, const std::vector<std::string>& secrets) {
  return body_excerpt(redact(std::string(text), secrets), 512);
}

MI_DETAIL_COLD Error http_status_error(const ClientState& st, const HttpResponse& response, int attempts,
                                       const std::vector<std::string>& secrets) {
  ErrorBody details = parse_error_body(response.body);
  std::string code = endpoint_text(details.code, secrets);
  std::string description = endpoint_text(details.description, secrets);
  std::string message = cat({source_label(st.source), " answered HTTP ", num(response.status)});
  if (!code.empty() || !description.empty()) {
    message += cat({" (", code, !code.empty() && !description.empty() ? ": " : "", description, ")"});
  } else if (!details.json && !trim(response.body).empty()) {
    message += cat({" (\"", endpoint_text(response.body, secrets), "\")"});
  }
  if (attempts > 1) message += cat({" after ", num(attempts), " attempts"});
  message += cat({"; ", status_hint(st.source, response.status, details.json)});
  Error e = ErrorAccess::make(Errc::http_status, redact(message, secrets), st.source);
  ErrorAccess::set_status(e, response.status);
  ErrorAccess::set_retryable(e, retryable_status(st.source, response.status));
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

MI_DETAIL_COLD void log_retry(const ClientState& st, const Error* error, const std::vector<std::string>& secrets,
                              int status, Millis wait) {
  if (error != nullptr)
    st.log(LogLevel::Warning, cat({source_label(st.source), " request failed: ", redact(error->message(), secrets),
                                   "; retrying in ", num(wait.count()), " ms"}));
  else
    st.log(LogLevel::Warning, cat({source_label(st.source), " answered HTTP ", num(status), "; retrying in ",
                                   num(wait.count()), " ms"}));
}

MI_DETAIL_COLD Result<HttpResponse> retry_deadline(const ClientState& st, int last_status) {
  Error e = make_error(Errc::timeout, cat({"the context's deadline would pass before the next retry to ",
                                           source_label(st.source), last_status_note(last_status),
                                           "; give the call more time (mi::Context::WithTimeout)"}));
  ErrorAccess::set_source(e, st.source);
  ErrorAccess::set_status(e, last_status);
  return e;
}

// Sends `request` until it gets a final answer (SPEC §8): transport errors and the
// source's retryable statuses are retried with backoff, honouring Retry-After, within
// the context. Any status that is not retried is returned as a value.
Result<HttpResponse> send_with_retries(const ClientState& st, const Context& ctx, const HttpRequest& request,
                                       const std::vector<std::string>& secrets, int& attempts) {
  attempts = 0;
  int last_status = 0;
  for (int retries = 0;; ++retries) {
    ContextStatus cs = context_status(ctx);
    if (cs != ContextStatus::ok) return retry_stopped(st, cs, last_status);
    ++attempts;
    Context attempt_ctx = ctx.WithTimeout(st.config.attempt_timeout);
    Result<HttpResponse> result = st.transport->Do(attempt_ctx, request);
    Millis wait(0);
    if (!result) {
      cs = context_status(ctx);
      if (cs != ContextStatus::ok) return retry_stopped(st, cs, last_status);
      const Errc code = result.error().code();
      bool transient = code == Errc::network || code == Errc::timeout;
      if (!transient || retries >= retry_limit(st, 0)) return transport_failure(st, result.error(), secrets, attempts);
      wait = backoff(st.source, retries, 0);
      log_retry(st, &result.error(), secrets, 0, wait);
    } else {
      last_status = result->status;
      if (!retryable_status(st.source, last_status) || retries >= retry_limit(st, last_status)) return result;
      wait = backoff(st.source, retries, last_status);
      Millis after(0);
      if (retry_after(*result, st.now(), after) && after > wait) wait = after;
      log_retry(st, nullptr, secrets, last_status, wait);
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

// Fetches a token from the endpoint (no cache read). `cached` is the token cached for this
// key, if any (Service Fabric's revocation hash with claims).
Result<AuthResult> fetch_token(const ClientState& st, const Context& ctx, std::string_view resource,
                               const AcquireConfig& options, const std::string* cached_token) {
  RequestExtras extras;
  if (st.source == Source::DefaultToIMDS) extras.request_id = uuid4();
  if (st.source == Source::ServiceFabric) {
    if (!options.claims.empty() && cached_token != nullptr) extras.token_sha256 = sha256_hex(*cached_token);
    extras.capabilities = &st.config.capabilities;
  }
  BuiltRequest built;
  Error error(Errc::invalid_argument, "");
  if (!build_request(st.source, st.id, resource, extras, st.has_fixed_endpoint ? &st.fixed_endpoint : nullptr, built,
                     error))
    return finish_error(st, error, extras.request_id);
  // An endpoint that echoes the token we hold (claims, refresh) must not get it into a message.
  if (cached_token != nullptr) built.secrets.push_back(std::string(*cached_token));
  if (!st.transport) {
    return finish_error(st,
                        make_error(Errc::tls,
                                   "Service Fabric's endpoint is HTTPS, and this program was built without HTTPS "
                                   "support: define MI_USE_CURL where MI_IMPLEMENTATION is defined, with the libcurl "
                                   "and OpenSSL headers installed (libcurl is loaded when first needed; CMake: "
                                   "-DMI_USE_CURL=ON)"),
                        extras.request_id);
  }

  int attempts = 0;
  Result<HttpResponse> response = send_with_retries(st, ctx, built.request, built.secrets, attempts);
  if (response && st.source == Source::AzureArc) {
    // Leg 1 answered; it must be the 401 challenge (SPEC §3).
    if (response->status == 401) {
      std::string path, key;
      if (!arc_realm_path(*response, path, error) || !arc_read_key(path, key, error))
        return finish_error(st, error, extras.request_id);
      built.secrets.push_back(std::string(key));
      add_pair(built.request.headers, "Authorization", cat({"Basic ", key}));
      response = send_with_retries(st, ctx, built.request, built.secrets, attempts);
    } else if (response->status == 200 || response->status == 202) {
      return finish_error(st,
                          arc_error({"the agent answered the first request with HTTP ", num(response->status),
                                     " instead of the 401 challenge; check that IDENTITY_ENDPOINT is the Arc agent"}),
                          extras.request_id);
    }
  }
  if (!response) return finish_error(st, response.error(), extras.request_id);
  if (response->status != 200 && response->status != 202)
    return finish_error(st, http_status_error(st, *response, attempts, built.secrets), extras.request_id);

  SysClock::time_point now = st.now();
  Result<TokenResponse> parsed = parse_token_response(response->body, now);
  if (!parsed) return finish_error(st, parsed.error(), extras.request_id, true);
  if (st.source == Source::AzureArc && !arc_confirms_identity(st.id, *parsed)) {
    return finish_error(st,
                        arc_error({"the agent did not confirm the requested ", id_kind_label(st.id.kind()),
                                   " in its token response; the agent is likely too old for user-assigned identities "
                                   "and returned the system-assigned one (update the Azure Connected Machine agent)"}),
                        extras.request_id);
  }
  AuthResult result;
  result.access_token = std::move(parsed->access_token);
  result.token_type = std::move(parsed->token_type);
  result.resource.assign(resource);
  result.expires_on = parsed->expires_on;
  result.refresh_on = parsed->refresh_on;
  result.token_source = TokenSource::IdentityProvider;
  st.log(LogLevel::Info,
         cat({"acquired a token for '", resource, "' from ", source_label(st.source), ", expiring in ",
              num(std::chrono::duration_cast<std::chrono::seconds>(result.expires_on - now).count()), " s"}));
  return result;
}

void store_token(const ClientState& st, const CacheKey& key, const AuthResult& result) {
  CachedToken token;
  token.access_token = result.access_token;
  token.token_type = result.token_type;
  token.expires_on = result.expires_on;
  token.refresh_on = result.refresh_on;
  if (!TokenCache::instance().store(key, token, st.now()))
    st.log(LogLevel::Warning, "the token expires within 5 minutes, so it is not cached");
}

std::string_view trim_default_scope(std::string_view resource) {
  const std::string_view suffix = "/.default";
  if (ends_with(resource, suffix)) resource.remove_suffix(suffix.size());
  return resource;
}

Result<AuthResult> acquire(const ClientState& st, const Context& ctx, std::string_view requested,
                           const AcquireConfig& options) {
  std::string_view resource = trim_default_scope(requested);
  CacheKey key{st.source, st.id.kind(), st.id.value(), resource};
  TokenCache& cache = TokenCache::instance();

  // Claims: always fetch (SPEC §7), never coalesce; the new token is cached.
  if (!options.claims.empty()) {
    CachedToken cached;
    bool have = cache.peek(key, cached);
    Result<AuthResult> result = fetch_token(st, ctx, resource, options, have ? &cached.access_token : nullptr);
    if (result) store_token(st, key, *result);
    return result;
  }

  AuthResult cached;
  cached.token_source = TokenSource::Cache;
  switch (cache.find(key, st.hit_now(), cached)) {
    case TokenCache::Hit::fresh:
      cached.resource.assign(resource);
      return Result<AuthResult>(std::move(cached));
    case TokenCache::Hit::refresh: {
      // This caller refreshes; the others keep getting the cached token meanwhile.
      Result<AuthResult> result = fetch_token(st, ctx, resource, options, &cached.access_token);
      if (result) store_token(st, key, *result);
      cache.end_refresh(key);
      if (result) return result;
      st.log(LogLevel::Warning, cat({"proactive token refresh failed, using the cached token until it expires: ",
                                     result.error().message()}));
      cached.resource.assign(resource);
      return Result<AuthResult>(std::move(cached));
    }
    case TokenCache::Hit::miss: break;
  }

  // A miss: one request per key; concurrent callers wait for it (SPEC §6).
  for (;;) {
    bool leader = false;
    std::shared_ptr<Flight> flight = cache.join_or_lead(key, st.now(), leader, cached);
    if (!flight) {
      cached.resource.assign(resource);
      return Result<AuthResult>(std::move(cached));
    }
    if (leader) {
      Result<AuthResult> result = fetch_token(st, ctx, resource, options, nullptr);
      if (result) store_token(st, key, *result);
      cache.land(flight, result, context_status(ctx) != ContextStatus::ok);
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

}  // namespace detail

// ---- public functions ---------------------------------------------------------------------

namespace detail {

// How an option changes the configuration: `apply` takes its fields from the option's `patch`.
using ConfigApply = void (*)(ClientConfig& config, const ClientConfig& patch);

// Every ClientOption holds the same kind of callable (a patch and the plain function that
// applies it), so std::function's machinery is compiled once rather than once per option.
ClientOption patch_option(std::shared_ptr<ClientConfig> patch, ConfigApply apply) {
  return ClientOption([patch = std::move(patch), apply](ClientConfig& c) { apply(c, *patch); });
}

std::shared_ptr<ClientConfig> new_patch() { return std::make_shared<ClientConfig>(); }

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

MI_DETAIL_COLD Result<Client> New(ID id, const std::vector<ClientOption>& options) {
  auto state = std::make_shared<detail::ClientState>();
  state->source = detail::detect_source();
  Error error(Errc::invalid_argument, "");
  if (!detail::check_identity(state->source, id, error)) return error;
  state->id = std::move(id);
  for (const ClientOption& option : options) option.apply(state->config);

  if (state->source == Source::ServiceFabric) {
    // SPEC §4: endpoint fixed now, HTTPS only; the thumbprint must be a SHA-1.
    if (!detail::endpoint_from(detail::env("IDENTITY_ENDPOINT"), "IDENTITY_ENDPOINT", "https", state->source,
                               state->fixed_endpoint, error))
      return error;
    state->has_fixed_endpoint = true;
    std::string pin;
    if (!detail::parse_thumbprint(detail::env("IDENTITY_SERVER_THUMBPRINT"), pin))
      return detail::ErrorAccess::make(Errc::invalid_argument,
                                       "IDENTITY_SERVER_THUMBPRINT must be a SHA-1 certificate thumbprint (40 "
                                       "hexadecimal digits, ':' and spaces allowed)",
                                       state->source);
    if (state->config.http) {
      state->transport = state->config.http;
    } else {
#if defined(MI_USE_CURL)
      state->transport = std::make_shared<detail::CurlTransport>(pin, state->config.connect_timeout);
#endif
    }
  } else {
    state->transport = state->config.http ? state->config.http
                                          : std::make_shared<detail::SocketTransport>(state->config.connect_timeout);
  }
  return detail::ClientState::make_client(std::move(state));
}

Result<AuthResult> Client::AcquireToken(const Context& ctx, std::string_view resource) const {
  static const detail::AcquireConfig no_options;
  return detail::acquire(*state_, ctx, resource, no_options);
}

Result<AuthResult> Client::AcquireToken(const Context& ctx, std::string_view resource,
                                        const std::vector<AcquireTokenOption>& options) const {
  detail::AcquireConfig config;
  for (const AcquireTokenOption& option : options) option.apply(config);
  return detail::acquire(*state_, ctx, resource, config);
}

Source Client::source() const noexcept { return state_->source; }
const ID& Client::id() const noexcept { return state_->id; }

}  // namespace v1
}  // namespace mi
