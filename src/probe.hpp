// mi::Probe (docs/protocol.md §11): is a managed identity endpoint here? A program that runs
// both on Azure and on a developer's machine asks once at start-up and picks its credential,
// instead of finding out through a token request's retries (tens of seconds off Azure).
// A source the environment configures is answered from the variables alone; IMDS, and an
// Azure Arc agent found by its file, must answer one request within a short bound.
#pragma once
#include "client.hpp"

namespace mi {
inline namespace v1 {
namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

// The bound when the caller's context has none: a metadata endpoint on the same host or
// link answers in milliseconds, and off Azure the address is usually silently dropped.
constexpr Millis kProbeTimeout{1000};

// Whether the source was found by its detection variables (all set). Those name the
// endpoint, so the answer needs no I/O. A source found otherwise (the Arc agent's file, or
// IMDS as the fallback) may or may not have an endpoint listening, so it is asked.
bool configured_by_variables(const SourceSpec& spec) {
  if (spec.detect_variables.at[0] == nullptr) return false;
  for (const char* name : spec.detect_variables)
    if (name != nullptr && env(name).empty()) return false;
  return true;
}

// A GET to the token URL with no query and no Metadata header: it asks for no token, IMDS
// refuses it with 400 and the Arc agent with 400 or 401, and any answer shows the endpoint
// is there.
Result<HttpRequest> probe_request(const SourceSpec& spec) {
  Result<Url> url = endpoint_from(configured_endpoint(spec), spec.endpoint_variable, spec.scheme, spec.source);
  if (!url) return url.error();
  url->query.clear();
  HttpRequest request;
  request.method = "GET";
  request.url = url->str();
  add_pair(request.headers, "User-Agent", kUserAgent);
  return request;
}

// Docker Desktop answers for the IMDS address itself, with a 403 whose body says the network
// is unreachable: that is the container runtime, not a managed identity endpoint.
bool unreachable_network_answer(const HttpResponse& response) {
  if (response.status != 403) return false;
  const std::string_view word = "unreachable";
  const std::string_view body = response.body;
  for (size_t i = 0; i + word.size() <= body.size(); ++i)
    if (iequals(body.substr(i, word.size()), word)) return true;
  return false;
}

MI_DETAIL_COLD Error probe_absent(const SourceSpec& spec, const std::string& url, Errc code,
                                  std::initializer_list<std::string_view> why) {
  return ErrorAccess::make(code,
                           cat({"no managed identity endpoint answered (", spec.label, " at ", url, ": ", cat(why),
                                "); this program is probably not running on Azure, so use another credential here"}),
                           spec.source);
}

Result<Source> probe(const Context& ctx, const std::vector<ClientOption>& options) {
  ClientState st;
  st.source = detect_source();
  const SourceSpec& spec = source_spec(st.source);
  for (const ClientOption& option : options) option.apply(st.config);
  // The options are checked as New checks them (a pinned source's transport must pin, its
  // endpoint and thumbprint must parse), even where no request follows.
  Result<bool> transport = choose_transport(spec, st);
  if (!transport) return transport.error();
  ContextStatus cs = context_status(ctx);
  if (cs != ContextStatus::ok) {
    Error e = context_error(cs, {"probing for ", spec.label});
    ErrorAccess::set_source(e, st.source);
    return e;
  }
  if (configured_by_variables(spec)) return st.source;

  Result<HttpRequest> request = probe_request(spec);
  if (!request) return request.error();
  if (!st.transport) return no_transport_error(spec);
  // No deadline: the probe's own. A deadline, even a longer one, is the caller's choice.
  const bool own_bound = ctx.deadline() == SteadyClock::time_point::max();
  Context bounded = (own_bound ? ctx.WithTimeout(kProbeTimeout) : ctx).WithTimeout(st.config.attempt_timeout);
  // One attempt, never retried: a slow "no" is what the probe exists to avoid.
  Result<HttpResponse> response = call_transport(st, bounded, *request);
  if (response) {
    if (unreachable_network_answer(*response))
      return probe_absent(spec, request->url, Errc::network,
                          {"HTTP 403 saying the network is unreachable, which is how a container runtime such as "
                           "Docker Desktop answers for the IMDS address"});
    st.log(LogLevel::Info, cat({"probe: ", spec.label, " answered HTTP ", num(response->status), " at ", request->url,
                                ", so a managed identity endpoint is here"}));
    return st.source;
  }
  cs = context_status(ctx);
  if (cs == ContextStatus::canceled) {
    Error e = context_error(cs, {"probing for ", spec.label});
    ErrorAccess::set_source(e, st.source);
    return e;
  }
  const Error& error = response.error();
  if (error.code() == Errc::timeout)
    return probe_absent(spec, request->url, Errc::timeout,
                        {"no answer ", own_bound ? cat({"within ", num(kProbeTimeout.count()), " ms"})
                                                 : std::string("before the context's deadline")});
  if (error.code() == Errc::network) return probe_absent(spec, request->url, Errc::network, {error.message()});
  Error e = error;
  ErrorAccess::set_source(e, st.source);
  return e;
}

}  // namespace
}  // namespace detail

Result<Source> Probe(const Context& ctx, const std::vector<ClientOption>& options) {
  return detail::probe(ctx, options);
}

}  // namespace v1
}  // namespace mi
