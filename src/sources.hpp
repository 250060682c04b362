// The seven sources. Each is described once, by its entry in kSources below: how it is
// detected (docs/protocol.md §1), its request (§2), its retry class (§8), its transport's
// TLS mode (§4) and the hints its errors carry. Where a source's protocol truly differs
// from the table, its entry names one function, defined in the source's section further
// down: Azure ML's always-sent clientid, Service Fabric's revocation hash and
// capabilities (and its pinned endpoint, fixed at New), the Azure Arc challenge (§3),
// workload identity's inputs fixed at New and its client-credentials form (§12).
// Adding a source is one entry, plus such a function where its protocol needs one.
#pragma once
#include "response.hpp"
#include "url.hpp"
#include "http.hpp"

namespace mi {
inline namespace v1 {
namespace detail {
namespace {  // internal linkage: nothing below is visible outside this translation unit

constexpr const char* kUserAgent = "managed-identity-cpp/" MI_VERSION_STRING;
constexpr const char* kImdsEndpoint = "http://169.254.169.254/metadata/identity/oauth2/token";
constexpr const char* kImdsPath = "/metadata/identity/oauth2/token";
constexpr const char* kArcDefaultEndpoint = "http://127.0.0.1:40342/metadata/identity/oauth2/token";
constexpr size_t kArcMaxKeyBytes = 4096;
constexpr const char* kEntraAuthority = "https://login.microsoftonline.com/";
constexpr size_t kMaxFederatedTokenBytes = 64 * 1024;

// ---- what a source is ------------------------------------------------------------------

// How the transport secures the connection (docs/protocol.md §4, §12).
enum class TlsMode {
  plain,            // http:// through the built-in socket transport
  pinned,           // https:// whose leaf certificate must match a thumbprint fixed at New
  chain_validated,  // https:// whose chain and host name are checked against the trust store
};

// A retry class (docs/protocol.md §8, §12). Every class retries transport errors, 408 and 429.
struct RetryClass {
  bool every_5xx = false;      // 500-599; otherwise 500, 502, 503 and 504 only
  bool exponential = false;    // waits 1 s, 2 s, 4 s, ...; otherwise 1 s each
  bool imds_updating = false;  // 410 ("IMDS is being updated"): up to 7 retries, 10 s apart
  bool not_found = true;       // 404: a managed identity still being assigned (never so for Entra ID)
};
constexpr RetryClass kImdsRetries{true, true, true, true};
constexpr RetryClass kStandardRetries{};
constexpr RetryClass kEntraRetries{false, true, false, false};

struct Header {
  const char* name = nullptr;
  const char* value = nullptr;
};

// Up to N names or headers in a table entry; unused slots stay null.
template <class T, size_t N>
struct Slots {
  T at[N]{};
  const T* begin() const { return at; }
  const T* end() const { return at + N; }
};
template <class T>
using Three = Slots<T, 3>;

}  // namespace
struct WorkloadSetup;  // below, outside the unnamed namespace: ClientState holds one
namespace {  // internal linkage: nothing below is visible outside this translation unit

// What one acquisition adds to the request the table describes.
struct RequestExtras {
  std::string_view request_id;                             // for the source's request_id_header
  std::string_view claims;                                 // non-empty: a claims request (§7)
  const std::string* cached_token = nullptr;               // the token cached for the key, if any
  const std::vector<std::string>* capabilities = nullptr;  // the client's, not a copy
  const WorkloadSetup* workload = nullptr;                 // workload identity: its inputs fixed at New
};

struct BuiltRequest {
  HttpRequest request;
  std::vector<std::string> secrets;  // values that must never appear in a message or log
};

}  // namespace

// A pinned source's endpoint and the thumbprint its certificate must match, fixed at New.
struct PinnedEndpoint {
  Url url;
  std::string pinned_sha1;  // 40 upper-case hex digits (HttpRequest::pinned_sha1)
  std::string sha1_bytes;   // the same 20 bytes raw, for the built-in transport
};

// Workload identity's inputs, read and checked at New (docs/protocol.md §12). The token
// file's contents are not among them: kubelet rotates the file, so it is read per request.
struct WorkloadSetup {
  std::string client_id;   // the user-assigned client ID, else AZURE_CLIENT_ID
  std::string token_file;  // AZURE_FEDERATED_TOKEN_FILE
  Url url;                 // {authority}{tenant}/oauth2/v2.0/token, through the token proxy if any
  // The AKS token proxy (identity binding): its TLS trusts only its own CA, given as a
  // file or as PEM text, and the certificate must name sni_name when that is set.
  bool token_proxy = false;
  std::string proxy_ca_file, proxy_ca_pem, sni_name;
};

namespace {  // internal linkage: nothing below is visible outside this translation unit

// The functions entries name; each is defined in its source's section below.
bool arc_agent_installed();
void azure_ml_parameters(const ID& id, const RequestExtras& extras, StringPairs& params);
void service_fabric_parameters(const ID& id, const RequestExtras& extras, StringPairs& params);
Result<bool> arc_answer_challenge(const HttpResponse& leg1, BuiltRequest& built);
Result<bool> arc_confirm_identity(const ID& id, const TokenEcho& echo);
struct SourceSpec;
Result<WorkloadSetup> workload_setup(const SourceSpec& spec, const ID& id);
Result<bool> workload_request(std::string_view resource, const RequestExtras& extras, BuiltRequest& out);
const char* entra_hint(const ErrorBody& body);

struct SourceSpec {
  Source source = Source::DefaultToIMDS;
  const char* label = nullptr;  // the source's name in messages

  // Detection (§1): every variable named here is set and not empty, or detect_also() says
  // so. An entry with neither matches always (the fallback, so it comes last).
  Three<const char*> detect_variables;
  bool (*detect_also)() = nullptr;

  // The request (§2).
  const char* method = "GET";
  const char* endpoint_variable = nullptr;  // where the endpoint URL comes from, named in errors
  const char* endpoint_default = nullptr;   // used when that variable is empty
  const char* endpoint_base_path = nullptr;  // set: the variable is a base URL this path is appended to
  const char* scheme = "http";              // the only scheme the endpoint may have
  const char* api_version = nullptr;        // null: none sent
  bool form_body = false;                   // the parameters go in a form body, not the query
  // The parameter carrying a user-assigned ID, per kind; null: the kind is refused, for
  // the reason in id_refusal (at New, unsupported_identity).
  const char* client_id_parameter = nullptr;
  const char* object_id_parameter = nullptr;
  const char* resource_id_parameter = nullptr;
  const char* id_refusal = nullptr;
  const char* secret_variable = nullptr;  // read at every request, sent in secret_header
  const char* secret_header = nullptr;
  Slots<Header, 4> headers;                 // fixed headers, after User-Agent and the secret
  const char* request_id_header = nullptr;  // a new UUID per acquisition, also the errors' correlation id
  void (*add_parameters)(const ID&, const RequestExtras&, StringPairs&) = nullptr;
  // Set: the source's inputs are read and checked at New (their failure fails New), and the
  // request's URL and parameters come from own_request instead of the fields above (which
  // then only describe the source, its headers and its refusals).
  Result<WorkloadSetup> (*setup)(const SourceSpec&, const ID&) = nullptr;
  Result<bool> (*own_request)(std::string_view resource, const RequestExtras&, BuiltRequest&) = nullptr;

  // Transport and retries (§4, §8).
  TlsMode tls = TlsMode::plain;
  const char* pin_variable = nullptr;  // TlsMode::pinned: the thumbprint
  RetryClass retry = kStandardRetries;

  // After the first answer: true to send the request again (Azure Arc's second leg), false
  // when that answer is final. After a token: an error if it is not the one asked for.
  Result<bool> (*answer_challenge)(const HttpResponse&, BuiltRequest&) = nullptr;
  Result<bool> (*confirm_token)(const ID&, const TokenEcho&) = nullptr;

  // Hints in http_status messages; null: the generic hint.
  const char* hint_400 = nullptr;
  const char* hint_401_403 = nullptr;
  const char* hint_not_json = nullptr;  // a 403, 502, 503 or 504 whose body is not JSON
  const char* (*hint_for_body)(const ErrorBody&) = nullptr;  // ahead of the above, when it has one
};

// AKS workload identity: a projected service-account token, exchanged with Microsoft Entra
// ID for an access token (docs/protocol.md §12). First, so that a pod that asked for it
// never silently gets the node's identity instead.
constexpr SourceSpec workload_identity_spec() {
  SourceSpec s;
  s.source = Source::WorkloadIdentity;
  s.label = "Microsoft Entra ID";
  s.detect_variables = {{"AZURE_FEDERATED_TOKEN_FILE", "AZURE_TENANT_ID"}};
  s.method = "POST";
  s.endpoint_variable = "AZURE_AUTHORITY_HOST";
  s.endpoint_default = kEntraAuthority;
  s.scheme = "https";
  s.form_body = true;
  s.client_id_parameter = "client_id";
  s.id_refusal = "workload identity names the application by its client ID; use mi::UserAssignedClientID(), or "
                 "mi::SystemAssigned() for AZURE_CLIENT_ID";
  s.headers = {{{"Accept", "application/json"},
                {"x-client-SKU", "managed-identity-cpp"},
                {"x-client-Ver", MI_VERSION_STRING},
                {"return-client-request-id", "true"}}};
  s.request_id_header = "client-request-id";
  s.setup = workload_setup;
  s.own_request = workload_request;
  s.tls = TlsMode::chain_validated;
  s.retry = kEntraRetries;
  s.hint_400 = "check AZURE_CLIENT_ID, AZURE_TENANT_ID and the application's federated identity credential";
  s.hint_401_403 = "Microsoft Entra ID refused the service-account token; check the application's federated "
                   "identity credential (issuer and subject) and AZURE_FEDERATED_TOKEN_FILE";
  s.hint_for_body = entra_hint;
  return s;
}

// Service Fabric: IDENTITY_ENDPOINT and IDENTITY_HEADER, with a certificate thumbprint.
constexpr SourceSpec service_fabric_spec() {
  SourceSpec s;
  s.source = Source::ServiceFabric;
  s.label = "Service Fabric";
  s.detect_variables = {{"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT"}};
  s.endpoint_variable = "IDENTITY_ENDPOINT";
  s.scheme = "https";
  s.api_version = "2019-07-01-preview";
  s.id_refusal = "Service Fabric does not accept a user-assigned identity in the request: the identity is set by "
                 "the cluster's resource configuration (https://aka.ms/servicefabricmi); use mi::SystemAssigned()";
  s.secret_variable = "IDENTITY_HEADER";
  s.secret_header = "Secret";
  s.headers = {{{"Accept", "application/json"}}};
  s.add_parameters = service_fabric_parameters;
  s.tls = TlsMode::pinned;
  s.pin_variable = "IDENTITY_SERVER_THUMBPRINT";
  s.hint_401_403 = "the endpoint refused IDENTITY_HEADER; restart the app so it gets a fresh one";
  return s;
}

// App Service and Functions: IDENTITY_ENDPOINT and IDENTITY_HEADER.
constexpr SourceSpec app_service_spec() {
  SourceSpec s;
  s.source = Source::AppService;
  s.label = "App Service";
  s.detect_variables = {{"IDENTITY_ENDPOINT", "IDENTITY_HEADER"}};
  s.endpoint_variable = "IDENTITY_ENDPOINT";
  s.api_version = "2019-08-01";
  s.client_id_parameter = "client_id";
  s.object_id_parameter = "object_id";
  s.resource_id_parameter = "mi_res_id";  // not msi_res_id
  s.secret_variable = "IDENTITY_HEADER";
  s.secret_header = "X-IDENTITY-HEADER";
  s.hint_401_403 = "the endpoint refused IDENTITY_HEADER; restart the app so it gets a fresh one";
  return s;
}

// Azure ML compute: MSI_ENDPOINT and MSI_SECRET.
constexpr SourceSpec azure_ml_spec() {
  SourceSpec s;
  s.source = Source::AzureML;
  s.label = "Azure ML";
  s.detect_variables = {{"MSI_ENDPOINT", "MSI_SECRET"}};
  s.endpoint_variable = "MSI_ENDPOINT";
  s.api_version = "2017-09-01";
  s.client_id_parameter = "clientid";
  s.id_refusal = "Azure ML accepts a user-assigned identity by client ID only; use mi::UserAssignedClientID()";
  s.secret_variable = "MSI_SECRET";
  s.secret_header = "secret";
  s.add_parameters = azure_ml_parameters;
  s.hint_401_403 = "the endpoint refused MSI_SECRET; check the compute's identity setup";
  return s;
}

// Cloud Shell: MSI_ENDPOINT alone. The endpoint URL is sent as configured.
constexpr SourceSpec cloud_shell_spec() {
  SourceSpec s;
  s.source = Source::CloudShell;
  s.label = "Cloud Shell";
  s.detect_variables = {{"MSI_ENDPOINT"}};
  s.method = "POST";
  s.endpoint_variable = "MSI_ENDPOINT";
  s.form_body = true;
  s.id_refusal = "Cloud Shell supports only its system-assigned identity; use mi::SystemAssigned()";
  s.headers = {{{"Metadata", "true"}}};
  return s;
}

// Azure Arc: IDENTITY_ENDPOINT and IMDS_ENDPOINT, or the agent's himds installed.
constexpr SourceSpec azure_arc_spec() {
  SourceSpec s;
  s.source = Source::AzureArc;
  s.label = "Azure Arc";
  s.detect_variables = {{"IDENTITY_ENDPOINT", "IMDS_ENDPOINT"}};
  s.detect_also = arc_agent_installed;
  s.endpoint_variable = "IDENTITY_ENDPOINT";
  s.endpoint_default = kArcDefaultEndpoint;
  s.api_version = "2020-06-01";
  s.client_id_parameter = "client_id";
  s.object_id_parameter = "object_id";
  s.resource_id_parameter = "msi_res_id";
  s.headers = {{{"Metadata", "true"}}};
  s.answer_challenge = arc_answer_challenge;
  s.confirm_token = arc_confirm_identity;
  return s;
}

// IMDS: Azure VMs, scale sets, AKS nodes; the fallback when nothing else is detected.
constexpr SourceSpec imds_spec() {
  SourceSpec s;
  s.source = Source::DefaultToIMDS;
  s.label = "IMDS";
  s.endpoint_variable = "AZURE_POD_IDENTITY_AUTHORITY_HOST";
  s.endpoint_default = kImdsEndpoint;
  s.endpoint_base_path = kImdsPath;
  s.api_version = "2018-02-01";
  s.client_id_parameter = "client_id";
  s.object_id_parameter = "object_id";
  s.resource_id_parameter = "msi_res_id";
  s.headers = {{{"Metadata", "true"}, {"x-client-SKU", "managed-identity-cpp"}, {"x-client-Ver", MI_VERSION_STRING}}};
  s.request_id_header = "x-ms-client-request-id";
  s.retry = kImdsRetries;
  s.hint_400 = "check that the identity is assigned to this VM (for a user-assigned identity, that its ID is right) "
               "and that the resource is a valid application ID URI";
  s.hint_not_json = "something other than IMDS may have answered (a proxy, or a container runtime such as Docker "
                    "Desktop); managed identity works only on the Azure resource itself";
  return s;
}

// In detection order (docs/protocol.md §1): the first entry that matches is the source.
constexpr SourceSpec kSources[] = {workload_identity_spec(), service_fabric_spec(), app_service_spec(),
                                   azure_ml_spec(),          cloud_shell_spec(),    azure_arc_spec(),
                                   imds_spec()};
constexpr size_t kSourceCount = sizeof kSources / sizeof kSources[0];
static_assert(kSources[kSourceCount - 1].source == Source::DefaultToIMDS, "IMDS is the fallback, tried last");

const SourceSpec& source_spec(Source source) {
  for (const SourceSpec& spec : kSources)
    if (spec.source == source) return spec;
  return kSources[kSourceCount - 1];  // not a Source value: treated as the fallback
}

inline const char* source_label(Source source) { return source_spec(source).label; }

// ---- detection (docs/protocol.md §1) ------------------------------------------------------

bool detected(const SourceSpec& spec) {
  bool all_set = true;
  for (const char* name : spec.detect_variables)
    if (name != nullptr && env(name).empty()) all_set = false;
  const bool has_variables = spec.detect_variables.at[0] != nullptr;
  if (has_variables && all_set) return true;
  if (spec.detect_also != nullptr) return spec.detect_also();
  return !has_variables;
}

Source detect_source() {
  for (const SourceSpec& spec : kSources)
    if (detected(spec)) return spec.source;
  return Source::DefaultToIMDS;
}

// ---- identities (docs/protocol.md §2) -----------------------------------------------------

const char* id_kind_label(IDKind kind) {
  switch (kind) {
    case IDKind::SystemAssigned: return "system-assigned identity";
    case IDKind::ClientID: return "user-assigned client ID";
    case IDKind::ObjectID: return "user-assigned object ID";
    case IDKind::ResourceID: return "user-assigned resource ID";
  }
  return "identity";
}

// The query parameter that carries a user-assigned ID, or nullptr (system-assigned, or refused).
const char* id_parameter(const SourceSpec& spec, IDKind kind) {
  switch (kind) {
    case IDKind::SystemAssigned: return nullptr;
    case IDKind::ClientID: return spec.client_id_parameter;
    case IDKind::ObjectID: return spec.object_id_parameter;
    case IDKind::ResourceID: return spec.resource_id_parameter;
  }
  return nullptr;
}

// The source's support for the ID kind first, then an empty value.
Result<bool> check_identity(const SourceSpec& spec, const ID& id) {
  if (id.kind() == IDKind::SystemAssigned) return true;
  if (id_parameter(spec, id.kind()) == nullptr)
    return ErrorAccess::make(Errc::unsupported_identity,
                             cat({"a ", id_kind_label(id.kind()), " cannot be used here: ", spec.id_refusal}),
                             spec.source);
  if (id.value().empty())
    return ErrorAccess::make(
        Errc::invalid_argument,
        cat({"the ", id_kind_label(id.kind()), " is empty; pass the identity's ID, or use mi::SystemAssigned()"}),
        spec.source);
  return true;
}

// ---- endpoints and secrets from the environment (docs/protocol.md §2) ------------------------

// Parses an endpoint URL taken from variable `name`: malformed, wrong scheme or a control
// character is invalid_argument. The message names the variable, not the value.
Result<Url> endpoint_from(const std::string& value, const char* name, const char* scheme, Source source) {
  std::string why;
  if (has_control_char(value)) {
    why = "it contains a control character";
  } else {
    Result<Url> parsed = parse_url(value);
    if (!parsed) {
      why = parsed.error().message();
    } else if (parsed->scheme != scheme) {
      why = cat({"its scheme must be ", scheme, "://"});
    } else {
      return parsed;
    }
  }
  return ErrorAccess::make(Errc::invalid_argument,
                           cat({name, " is not a valid ", scheme, " URL (", why, "); check the ",
                                source_label(source), " environment"}),
                           source);
}

// Reads a secret variable; a control character is invalid_argument (the value is never shown).
Result<std::string> secret_from(const char* name, Source source) {
  std::string value = env(name);
  if (has_control_char(value))
    return ErrorAccess::make(
        Errc::invalid_argument,
        cat({name, " contains a control character; check the ", source_label(source), " environment"}), source);
  return value;
}

// The endpoint URL as configured: the variable, else the default. A base URL (IMDS's
// AZURE_POD_IDENTITY_AUTHORITY_HOST) loses one trailing '/', gets the token path, and
// http:// when it has no scheme.
std::string configured_endpoint(const SourceSpec& spec) {
  std::string value = env(spec.endpoint_variable);
  if (value.empty()) return spec.endpoint_default != nullptr ? spec.endpoint_default : "";
  if (spec.endpoint_base_path == nullptr) return value;
  if (value.back() == '/') value.pop_back();
  return cat({value.find("://") == std::string::npos ? "http://" : "", value, spec.endpoint_base_path});
}

// ---- request building (docs/protocol.md §2) -------------------------------------------------

// The endpoint: a pinned source's as fixed at New, every other read now.
Result<Url> request_url(const SourceSpec& spec, const PinnedEndpoint* pinned) {
  if (spec.tls == TlsMode::pinned && pinned != nullptr) return pinned->url;
  return endpoint_from(configured_endpoint(spec), spec.endpoint_variable, spec.scheme, spec.source);
}

StringPairs request_parameters(const SourceSpec& spec, const ID& id, std::string_view resource,
                               const RequestExtras& extras) {
  StringPairs params;
  if (spec.api_version != nullptr) add_pair(params, "api-version", spec.api_version);
  add_pair(params, "resource", resource);
  if (const char* name = id_parameter(spec, id.kind())) add_pair(params, name, id.value());
  if (spec.add_parameters != nullptr) spec.add_parameters(id, extras, params);
  return params;
}

// application/x-www-form-urlencoded, every name and value percent-encoded.
std::string form_encode(const StringPairs& params) {
  std::string out;
  for (const auto& p : params) {
    if (!out.empty()) out.push_back('&');
    out += cat({percent_encode(p.first), "=", percent_encode(p.second)});
  }
  return out;
}

// User-Agent, the secret (read now), the entry's fixed headers, the request id, and the
// content type of a form body, in that order.
Result<bool> add_headers(const SourceSpec& spec, const RequestExtras& extras, BuiltRequest& out) {
  StringPairs& headers = out.request.headers;
  add_pair(headers, "User-Agent", kUserAgent);
  if (spec.secret_variable != nullptr) {
    Result<std::string> secret = secret_from(spec.secret_variable, spec.source);
    if (!secret) return secret.error();
    add_pair(headers, spec.secret_header, *secret);
    if (!secret->empty()) out.secrets.push_back(std::move(*secret));
  }
  for (const Header& header : spec.headers)
    if (header.name != nullptr) add_pair(headers, header.name, header.value);
  if (spec.request_id_header != nullptr) add_pair(headers, spec.request_id_header, extras.request_id);
  if (spec.form_body) add_pair(headers, "Content-Type", "application/x-www-form-urlencoded");
  return true;
}

// The one request of an acquisition (Azure Arc: leg 1). `pinned` is the endpoint and pin a
// pinned source fixed at New.
MI_DETAIL_NOINLINE Result<BuiltRequest> build_request(const SourceSpec& spec, const ID& id, std::string_view resource,
                                   const RequestExtras& extras, const PinnedEndpoint* pinned) {
  BuiltRequest out;
  out.request.method = spec.method;
  if (spec.own_request != nullptr) {
    Result<bool> own = spec.own_request(resource, extras, out);
    if (!own) return own.error();
    Result<bool> headers = add_headers(spec, extras, out);
    if (!headers) return headers.error();
    return out;
  }
  Result<Url> url = request_url(spec, pinned);
  if (!url) return url.error();
  StringPairs params = request_parameters(spec, id, resource, extras);
  if (spec.form_body) {
    out.request.body = form_encode(params);  // the URL is sent as configured
  } else {
    url->query = merge_query(url->query, params);
  }
  out.request.url = url->str();
  // The transport checks the pin before the secret goes out.
  if (spec.tls == TlsMode::pinned && pinned != nullptr) out.request.pinned_sha1 = pinned->pinned_sha1;
  Result<bool> headers = add_headers(spec, extras, out);
  if (!headers) return headers.error();
  return out;
}

// ---- Azure ML ----------------------------------------------------------------------------

// clientid is always sent: the user-assigned client ID (added from the table), else
// DEFAULT_IDENTITY_CLIENT_ID, else empty, as Go does.
void azure_ml_parameters(const ID& id, const RequestExtras&, StringPairs& params) {
  if (id.kind() == IDKind::SystemAssigned) add_pair(params, "clientid", env("DEFAULT_IDENTITY_CLIENT_ID"));
}

// ---- Service Fabric (docs/protocol.md §4, §7) ---------------------------------------------------

// With claims, the hash of the cached token the endpoint should not hand out again; the
// client capabilities on every request.
void service_fabric_parameters(const ID&, const RequestExtras& extras, StringPairs& params) {
  if (!extras.claims.empty() && extras.cached_token != nullptr)
    add_pair(params, "token_sha256_to_refresh", sha256_hex(*extras.cached_token));
  if (extras.capabilities != nullptr && !extras.capabilities->empty()) {
    std::string joined;
    for (const std::string& c : *extras.capabilities) {
      if (!joined.empty()) joined += ',';
      joined += c;
    }
    add_pair(params, "xms_cc", joined);
  }
}

// Invisible code points a thumbprint picks up when copied from a certificate viewer
// (Windows' dialog prepends U+200E): the direction marks U+200E and U+200F, the
// byte-order mark U+FEFF and the no-break space U+00A0, in UTF-8. Returns how many
// bytes to skip at `at`, 0 for none.
size_t invisible_mark_length(std::string_view text, size_t at) noexcept {
  static constexpr std::string_view kMarks[] = {"\xE2\x80\x8E", "\xE2\x80\x8F", "\xEF\xBB\xBF", "\xC2\xA0"};
  for (std::string_view mark : kMarks)
    if (text.compare(at, mark.size(), mark) == 0) return mark.size();
  return 0;
}

// IDENTITY_SERVER_THUMBPRINT: drop ':', white space and invisible marks, then exactly
// 40 hex digits (either case) -> 20 raw bytes. `sha1_bytes` is only written on success.
bool parse_thumbprint(std::string_view text, std::string& sha1_bytes) {
  std::string digits;
  digits.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == ':' || c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f') continue;
    if (size_t skip = invisible_mark_length(text, i)) {
      i += skip - 1;
      continue;
    }
    if (hex_value(c) < 0) return false;
    if (digits.size() == 40) return false;
    digits.push_back(c);
  }
  if (digits.size() != 40) return false;
  std::string out(20, '\0');
  for (size_t i = 0; i < 20; ++i)
    out[i] = static_cast<char>(hex_value(digits[2 * i]) * 16 + hex_value(digits[2 * i + 1]));
  sha1_bytes = std::move(out);
  return true;
}

// 20 raw bytes of a SHA-1 -> the 40 upper-case hex digits HttpRequest::pinned_sha1 carries.
std::string pin_hex(std::string_view sha1_bytes) {
  static const char digits[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(2 * sha1_bytes.size());
  for (char ch : sha1_bytes) {
    unsigned char c = static_cast<unsigned char>(ch);
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

// A pinned source's endpoint and pin, fixed at New: an https URL, and a SHA-1 thumbprint.
MI_DETAIL_NOINLINE Result<PinnedEndpoint> pinned_endpoint(const SourceSpec& spec) {
  Result<Url> url = endpoint_from(env(spec.endpoint_variable), spec.endpoint_variable, spec.scheme, spec.source);
  if (!url) return url.error();
  PinnedEndpoint out;
  if (!parse_thumbprint(env(spec.pin_variable), out.sha1_bytes))
    return ErrorAccess::make(Errc::invalid_argument,
                             cat({spec.pin_variable,
                                  " must be a SHA-1 certificate thumbprint (40 hexadecimal digits, ':' and spaces "
                                  "allowed)"}),
                             spec.source);
  out.url = std::move(*url);
  out.pinned_sha1 = pin_hex(out.sha1_bytes);
  return out;
}

// ---- Workload identity (docs/protocol.md §12) -------------------------------------------------

// A tenant goes into the token URL's path, so only a GUID or a domain name may: dot-separated
// labels of 1 to 63 letters, digits or hyphens, none empty (a GUID is one such label).
bool valid_domain_name(std::string_view name) noexcept {
  if (name.empty()) return false;
  size_t label = 0;
  for (char c : name) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    const bool allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
    if (!allowed || ++label > 63) return false;
  }
  return label > 0;
}

MI_DETAIL_COLD Error workload_error(std::initializer_list<std::string_view> message) {
  return ErrorAccess::make(Errc::invalid_argument, cat(message), Source::WorkloadIdentity);
}

// AZURE_KUBERNETES_TOKEN_PROXY and its TLS settings (identity binding): the request goes to
// the proxy's scheme, host and port, the proxy's path in front of the authority's.
MI_DETAIL_COLD Result<bool> workload_token_proxy(const std::string& proxy, WorkloadSetup& out) {
  if (has_control_char(proxy) || proxy.find('#') != std::string::npos)
    return workload_error({"AZURE_KUBERNETES_TOKEN_PROXY must be an https URL without a query or fragment"});
  Result<Url> url = endpoint_from(proxy, "AZURE_KUBERNETES_TOKEN_PROXY", "https", Source::WorkloadIdentity);
  if (!url) return url.error();
  if (!url->query.empty() || proxy.find('?') != std::string::npos)
    return workload_error({"AZURE_KUBERNETES_TOKEN_PROXY must be an https URL without a query or fragment"});
  std::string prefix = url->path;
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  out.url.scheme = url->scheme;
  out.url.host = url->host;
  out.url.port = url->port;
  out.url.path = cat({prefix, out.url.path});
  out.proxy_ca_file = env("AZURE_KUBERNETES_CA_FILE");
  out.proxy_ca_pem = env("AZURE_KUBERNETES_CA_DATA");
  if (out.proxy_ca_file.empty() == out.proxy_ca_pem.empty())
    return workload_error({"AZURE_KUBERNETES_TOKEN_PROXY is set, so exactly one of AZURE_KUBERNETES_CA_FILE and "
                           "AZURE_KUBERNETES_CA_DATA must be set (the token proxy's CA)"});
  out.sni_name = env("AZURE_KUBERNETES_SNI_NAME");
  if (!out.sni_name.empty() && !valid_domain_name(out.sni_name))
    return workload_error({"AZURE_KUBERNETES_SNI_NAME must be a host name (letters, digits, '-' and '.')"});
  out.token_proxy = true;
  return true;
}

// The inputs fixed at New: the client, the tenant, the token endpoint and its TLS trust.
MI_DETAIL_COLD Result<WorkloadSetup> workload_setup(const SourceSpec& spec, const ID& id) {
  WorkloadSetup out;
  out.client_id = id.kind() == IDKind::ClientID ? id.value() : env("AZURE_CLIENT_ID");
  if (out.client_id.empty())
    return workload_error({"workload identity needs the application's client ID: set AZURE_CLIENT_ID (the workload "
                           "identity webhook sets it from the service account's azure.workload.identity/client-id "
                           "annotation) or pass mi::UserAssignedClientID()"});
  const std::string tenant = env("AZURE_TENANT_ID");
  if (!valid_domain_name(tenant))
    return workload_error({"AZURE_TENANT_ID must be a tenant ID (a GUID) or a domain name"});
  Result<Url> authority = endpoint_from(configured_endpoint(spec), spec.endpoint_variable, spec.scheme, spec.source);
  if (!authority) return authority.error();
  out.url = std::move(*authority);
  if (out.url.path.back() != '/') out.url.path.push_back('/');
  out.url.path = cat({out.url.path, tenant, "/oauth2/v2.0/token"});
  out.token_file = env("AZURE_FEDERATED_TOKEN_FILE");
  const std::string proxy = env("AZURE_KUBERNETES_TOKEN_PROXY");
  if (!proxy.empty()) {
    Result<bool> proxied = workload_token_proxy(proxy, out);
    if (!proxied) return proxied.error();
  }
  return out;
}

MI_DETAIL_COLD Error token_file_error(const std::string& path, std::string_view rule) {
  return workload_error({"AZURE_FEDERATED_TOKEN_FILE ('", path.size() > 200 ? path.substr(0, 200) : path, "') ",
                         rule, "; nothing was sent"});
}

#if MI_DETAIL_WINDOWS
// Opens the file (links followed), checks the open handle (a regular file within the limit)
// and reads it.
Result<std::string> read_token_file(const std::string& path) {
  HANDLE file = CreateFileA(path.c_str(), GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                            nullptr, OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, nullptr);
  if (file == INVALID_HANDLE_VALUE) {
    DWORD code = GetLastError();
    if (code == ERROR_FILE_NOT_FOUND || code == ERROR_PATH_NOT_FOUND) return token_file_error(path, "does not exist");
    return token_file_error(path, cat({"could not be opened (error ", num(static_cast<long long>(code)), ")"}));
  }
  BY_HANDLE_FILE_INFORMATION info;
  bool regular = GetFileType(file) == FILE_TYPE_DISK && GetFileInformationByHandle(file, &info) &&
                 (info.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY) == 0;
  if (!regular) {
    CloseHandle(file);
    return token_file_error(path, "is not a regular file");
  }
  uint64_t size = (static_cast<uint64_t>(info.nFileSizeHigh) << 32) | info.nFileSizeLow;
  if (size > kMaxFederatedTokenBytes) {
    CloseHandle(file);
    return token_file_error(path, "is larger than 64 KiB");
  }
  std::string text(static_cast<size_t>(size), '\0');
  DWORD got = 0;
  bool ok = size == 0 || (ReadFile(file, &text[0], static_cast<DWORD>(size), &got, nullptr) && got == size);
  CloseHandle(file);
  if (!ok) {
    std::fill(text.begin(), text.end(), '\0');
    return token_file_error(path, "could not be read");
  }
  return text;
}
#else
// Opens the file without blocking (a FIFO must not hang the caller), following links (kubelet
// rotates the token by swapping one), checks the open descriptor (a regular file within the
// limit) and reads it.
Result<std::string> read_token_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return token_file_error(path, "does not exist");
    return token_file_error(path, cat({"could not be opened (", std::strerror(err), ")"}));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return token_file_error(path, "is not a regular file");
  }
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) > kMaxFederatedTokenBytes) {
    ::close(fd);
    return token_file_error(path, "is larger than 64 KiB");
  }
  // Read at most one byte past the limit, in case the file grew after fstat.
  std::string text(kMaxFederatedTokenBytes + 1, '\0');
  size_t total = 0;
  bool ok = true;
  while (total < text.size()) {
    ssize_t n = ::read(fd, &text[total], text.size() - total);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ok = false;
      break;
    }
    if (n == 0) break;
    total += static_cast<size_t>(n);
  }
  ::close(fd);
  if (!ok || total > kMaxFederatedTokenBytes) {
    std::fill(text.begin(), text.end(), '\0');
    return token_file_error(path, ok ? "is larger than 64 KiB" : "could not be read");
  }
  text.resize(total);
  return text;
}
#endif

// The client assertion: the file's text without surrounding white space, non-empty and
// without a control character (it is a JWT; anything else is not what kubelet wrote).
Result<std::string> read_assertion(const std::string& path) {
  Result<std::string> text = read_token_file(path);
  if (!text) return text;
  std::string_view assertion = trim(*text);
  const char* problem = assertion.empty() ? "is empty" : nullptr;
  for (char ch : assertion)
    if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) problem = "holds a control character";
  std::string out = problem == nullptr ? std::string(assertion) : std::string();
  std::fill(text->begin(), text->end(), '\0');
  if (problem != nullptr) return token_file_error(path, problem);
  return out;
}

// The claims form field (docs/protocol.md §7, §12): the caller's claims object with the
// client capabilities as access_token.xms_cc.values; "" when there is neither.
MI_DETAIL_COLD Result<std::string> workload_claims(std::string_view claims, const std::vector<std::string>* caps) {
  const bool have_caps = caps != nullptr && !caps->empty();
  if (claims.empty() && !have_caps) return std::string();
  JsonValue root;
  root.type = JsonValue::Type::Object;
  if (!claims.empty() && (!parse_json(claims, nullptr, root) || !root.is_object()))
    return ErrorAccess::make(Errc::invalid_argument, "mi::WithClaims: the claims must be a JSON object",
                             Source::WorkloadIdentity);
  if (!have_caps) return std::string(claims);
  // The named member, made an object if it is not one; later members of the same name are
  // dropped so that the text sent has one meaning.
  auto member = [](JsonValue& object, const char* name) -> JsonValue& {
    JsonValue* found = nullptr;
    auto& members = object.members;
    for (size_t i = 0; i < members.size();) {
      if (members[i].first != name) {
        ++i;
      } else if (found == nullptr) {
        found = &members[i++].second;
      } else {
        members.erase(members.begin() + static_cast<std::ptrdiff_t>(i));
      }
    }
    if (found == nullptr) {
      members.emplace_back(name, JsonValue());
      found = &members.back().second;
    }
    return *found;
  };
  auto reset = [](JsonValue& value, JsonValue::Type type) {
    value = JsonValue();
    value.type = type;
  };
  JsonValue& access_token = member(root, "access_token");
  if (!access_token.is_object()) reset(access_token, JsonValue::Type::Object);
  JsonValue& xms_cc = member(access_token, "xms_cc");
  if (!xms_cc.is_object()) reset(xms_cc, JsonValue::Type::Object);
  JsonValue& values = member(xms_cc, "values");
  reset(values, JsonValue::Type::Array);
  for (const std::string& cap : *caps) {
    JsonValue item;
    item.type = JsonValue::Type::String;
    item.text = cap;
    values.items.push_back(std::move(item));
  }
  std::string out;
  write_json(root, out);
  return out;
}

// The client-credentials form with the token file as the client assertion, read now: kubelet
// rotates the file. The assertion is a secret from here on.
Result<bool> workload_request(std::string_view resource, const RequestExtras& extras, BuiltRequest& out) {
  if (extras.workload == nullptr)
    return ErrorAccess::make(Errc::invalid_argument, "workload identity's inputs were not set up by mi::New",
                             Source::WorkloadIdentity);
  const WorkloadSetup& setup = *extras.workload;
  Result<std::string> claims = workload_claims(extras.claims, extras.capabilities);
  if (!claims) return claims.error();
  Result<std::string> assertion = read_assertion(setup.token_file);
  if (!assertion) return assertion.error();
  StringPairs form;
  add_pair(form, "grant_type", "client_credentials");
  add_pair(form, "client_id", setup.client_id);
  add_pair(form, "scope", cat({resource, "/.default"}));
  add_pair(form, "client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
  add_pair(form, "client_assertion", *assertion);
  if (!claims->empty()) add_pair(form, "claims", *claims);
  out.request.url = setup.url.str();
  out.request.body = form_encode(form);
  for (auto& field : form)
    if (field.first == "client_assertion") std::fill(field.second.begin(), field.second.end(), '\0');
  out.secrets.push_back(std::move(*assertion));
  return true;
}

// What to fix for the AADSTS codes a misconfigured pod meets; Entra's description starts
// with the code ("AADSTS70021: No matching federated identity record found ...").
MI_DETAIL_COLD const char* entra_hint(const ErrorBody& body) {
  std::string_view text = trim(body.description);
  const std::string_view prefix = "AADSTS";
  if (!starts_with(text, prefix)) return nullptr;
  text.remove_prefix(prefix.size());
  std::string_view code = text.substr(0, text.find_first_not_of("0123456789"));
  if (code == "70021")
    return "no federated identity credential of the application matches the service-account token: check the "
           "credential's issuer (the cluster's OIDC issuer URL) and subject "
           "(system:serviceaccount:<namespace>:<service account>)";
  if (code == "700016")
    return "the client ID is not an application in this tenant: check AZURE_CLIENT_ID (or the ID given to "
           "mi::UserAssignedClientID), the service account's azure.workload.identity/client-id annotation, and "
           "AZURE_TENANT_ID";
  if (code == "700024")
    return "the service-account token in AZURE_FEDERATED_TOKEN_FILE has expired: check that kubelet still rotates "
           "the projected token (the pod's token volume) and the node's clock";
  if (code == "90002")
    return "no such tenant: check AZURE_TENANT_ID, and that AZURE_AUTHORITY_HOST is the authority of the tenant's "
           "cloud";
  return nullptr;
}

// ---- Azure Arc (docs/protocol.md §1 step 4, §3) --------------------------------------------------

bool file_exists(const std::string& path) {
  if (path.empty()) return false;
#if MI_DETAIL_WINDOWS
  DWORD attributes = GetFileAttributesA(path.c_str());
  return attributes != INVALID_FILE_ATTRIBUTES;
#else
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
#endif
}

// Where the Arc agent's himds executable would be.
std::vector<std::string> arc_himds_paths() {
#if defined(MI_AZURE_ARC_HIMDS_PATH)
  return {MI_AZURE_ARC_HIMDS_PATH};
#elif MI_DETAIL_WINDOWS
  std::vector<std::string> out;
  // The agent installs under Program Files; Go looks under ProgramData: accept both.
  std::string program_files = env("ProgramFiles"), program_data = env("ProgramData");
  if (!program_files.empty()) out.push_back(cat({program_files, "\\AzureConnectedMachineAgent\\himds.exe"}));
  if (!program_data.empty()) out.push_back(cat({program_data, "\\AzureConnectedMachineAgent\\himds.exe"}));
  return out;
#elif defined(__linux__)
  return {"/opt/azcmagent/bin/himds"};
#else
  return {};
#endif
}

bool arc_agent_installed() {
  for (const std::string& path : arc_himds_paths())
    if (file_exists(path)) return true;
  return false;
}

// The directory the key file must be in; platform_not_supported where there is no Arc agent.
Result<std::string> arc_token_dir() {
#if defined(MI_AZURE_ARC_TOKEN_DIR)
  return std::string(MI_AZURE_ARC_TOKEN_DIR);
#elif MI_DETAIL_WINDOWS
  std::string program_data = env("ProgramData");
  if (program_data.empty()) program_data = "C:\\ProgramData";
  return cat({program_data, "\\AzureConnectedMachineAgent\\Tokens"});
#elif defined(__linux__)
  return std::string("/var/opt/azcmagent/tokens");
#else
  return ErrorAccess::make(Errc::platform_not_supported,
                           "Azure Arc managed identity is supported on Linux and Windows only", Source::AzureArc);
#endif
}

// The parts are joined into the message.
Error arc_error(std::initializer_list<std::string_view> message) {
  return ErrorAccess::make(Errc::arc_challenge, cat({"Azure Arc challenge failed: ", cat(message)}),
                           Source::AzureArc);
}
inline Error arc_error(std::string_view message) { return arc_error({message}); }

// The key file path from leg 1's WWW-Authenticate header ("Basic realm=<path>", the realm
// optionally quoted, parameters after a comma ignored).
Result<std::string> arc_realm_path(const HttpResponse& leg1) {
  const std::string* header = nullptr;
  for (const auto& h : leg1.headers)
    if (iequals(h.first, "WWW-Authenticate")) {
      header = &h.second;
      break;
    }
  if (header == nullptr || trim(*header).empty())
    return arc_error("the agent's 401 response has no WWW-Authenticate header; is IDENTITY_ENDPOINT the Arc agent?");
  std::string_view value = trim(*header);
  const std::string_view basic = "Basic";
  std::string_view rest;
  if (value.size() > basic.size() && iequals(value.substr(0, basic.size()), basic) &&
      (value[basic.size()] == ' ' || value[basic.size()] == '\t')) {
    rest = trim(value.substr(basic.size()));
  }
  const std::string_view realm = "realm=";
  if (rest.size() < realm.size() || !iequals(rest.substr(0, realm.size()), realm))
    return arc_error("the WWW-Authenticate header has no 'Basic realm=' naming the key file");
  rest.remove_prefix(realm.size());
  std::string path;
  if (!rest.empty() && rest.front() == '"') {
    size_t close = rest.find('"', 1);
    if (close == std::string_view::npos) return arc_error("the WWW-Authenticate realm has an unterminated quote");
    path.assign(rest.substr(1, close - 1));
  } else {
    path.assign(trim(rest.substr(0, rest.find(','))));
  }
  if (path.empty()) return arc_error("the WWW-Authenticate header's realm is empty; it should name the key file");
  if (has_control_char(path))
    return arc_error("the key file path in the WWW-Authenticate realm contains a control character");
  return path;
}

#if MI_DETAIL_WINDOWS
// Opens the key file without following a reparse point, checks the open handle (a regular
// file within the size limit) and reads it. `shown` is the path as messages quote it.
Result<std::string> arc_read_key_file(const std::string& path, const std::string& shown) {
  HANDLE file = CreateFileA(path.c_str(), GENERIC_READ, FILE_SHARE_READ, nullptr, OPEN_EXISTING,
                            FILE_FLAG_OPEN_REPARSE_POINT, nullptr);
  if (file == INVALID_HANDLE_VALUE) {
    DWORD code = GetLastError();
    // A directory cannot be opened this way (access denied): say what it is, not to run as admin.
    DWORD attributes = code == ERROR_ACCESS_DENIED ? GetFileAttributesA(path.c_str()) : INVALID_FILE_ATTRIBUTES;
    if (attributes != INVALID_FILE_ATTRIBUTES && (attributes & FILE_ATTRIBUTE_DIRECTORY) != 0)
      return arc_error({"the key file '", shown, "' is not a regular file"});
    if (code == ERROR_FILE_NOT_FOUND || code == ERROR_PATH_NOT_FOUND)
      return arc_error({"the key file '", shown, "' does not exist"});
    return arc_error({"the key file '", shown, "' could not be opened (error ", num(static_cast<long long>(code)),
                      "); run as an administrator or a member of the 'Hybrid agent extension applications' group"});
  }
  BY_HANDLE_FILE_INFORMATION info;
  bool regular = GetFileType(file) == FILE_TYPE_DISK && GetFileInformationByHandle(file, &info) &&
                 (info.dwFileAttributes & (FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_REPARSE_POINT)) == 0;
  if (!regular) {
    CloseHandle(file);
    return arc_error({"the key file '", shown, "' is not a regular file"});
  }
  uint64_t size = (static_cast<uint64_t>(info.nFileSizeHigh) << 32) | info.nFileSizeLow;
  if (size > kArcMaxKeyBytes) {
    CloseHandle(file);
    return arc_error({"the key file '", shown, "' is larger than 4096 bytes"});
  }
  std::string key(static_cast<size_t>(size), '\0');
  DWORD got = 0;
  bool ok = size == 0 || (ReadFile(file, &key[0], static_cast<DWORD>(size), &got, nullptr) && got == size);
  CloseHandle(file);
  if (!ok) {
    std::fill(key.begin(), key.end(), '\0');
    return arc_error({"the key file '", shown, "' could not be read"});
  }
  return key;
}
#else
// Opens the key file without following a link or blocking (a FIFO must not hang the
// caller), checks the open descriptor (a regular file within the size limit) and reads
// it. `shown` is the path as messages quote it.
Result<std::string> arc_read_key_file(const std::string& path, const std::string& shown) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return arc_error({"the key file '", shown, "' does not exist"});
    if (err == ELOOP) return arc_error({"the key file '", shown, "' is a symbolic link, which is not followed"});
    return arc_error({"the key file '", shown, "' could not be opened (", std::strerror(err),
                      "); the process must run as root or in the himds group"});
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return arc_error({"the key file '", shown, "' is not a regular file"});
  }
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) > kArcMaxKeyBytes) {
    ::close(fd);
    return arc_error({"the key file '", shown, "' is larger than 4096 bytes"});
  }
  // Read at most one byte past the limit, in case the file grew after fstat.
  char buffer[kArcMaxKeyBytes + 1];
  size_t total = 0;
  bool ok = true;
  while (total < sizeof buffer) {
    ssize_t n = ::read(fd, buffer + total, sizeof buffer - total);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ok = false;
      break;
    }
    if (n == 0) break;
    total += static_cast<size_t>(n);
  }
  ::close(fd);
  std::string key = ok && total <= kArcMaxKeyBytes ? std::string(buffer, total) : std::string();
  std::memset(buffer, 0, sizeof buffer);
  if (!ok) return arc_error({"the key file '", shown, "' could not be read"});
  if (total > kArcMaxKeyBytes) return arc_error({"the key file '", shown, "' is larger than 4096 bytes"});
  return key;
}
#endif

// Checks the realm path against the token directory, then reads the key file (docs/protocol.md
// §3 step 2). Never puts the contents in a message.
Result<std::string> arc_read_key(const std::string& path) {
  Result<std::string> dir = arc_token_dir();
  if (!dir) return dir.error();
  // The realm comes from the endpoint: quote at most 200 bytes of it in messages.
  const std::string shown = path.size() > 200 ? cat({std::string_view(path).substr(0, 200), "..."}) : path;
  if (has_control_char(path)) return arc_error("the key file path in the realm contains a control character");
  if (path.find("..") != std::string::npos) return arc_error({"the key file path '", shown, "' contains '..'"});
#if MI_DETAIL_WINDOWS
  size_t sep = path.find_last_of("\\/");
#else
  size_t sep = path.rfind('/');
#endif
  std::string name = sep == std::string::npos ? path : path.substr(sep + 1);
  if (name.size() <= 4 || !ends_with(name, ".key"))
    return arc_error({"the key file '", shown, "' does not have the .key extension"});
  if (sep == std::string::npos || path.substr(0, sep) != *dir)
    return arc_error({"the key file '", shown, "' is not in the agent's token directory ", *dir});
  Result<std::string> key = arc_read_key_file(path, shown);
  if (!key) return key;
  // The contents go into a header value as they are: an empty key would send a bare
  // "Basic ", and a control byte (a trailing newline from an editor, say) or a non-ASCII
  // one cannot be sent at all. Neither is a key the agent wrote.
  const char* problem = key->empty() ? "' is empty" : nullptr;
  for (char ch : *key)
    if (ch < 0x20 || ch > 0x7e) problem = "' holds a byte outside printable ASCII (a trailing newline, for instance)";
  if (problem != nullptr) {
    std::fill(key->begin(), key->end(), '\0');
    return arc_error({"the key file '", shown, problem});
  }
  return key;
}

// Leg 1's answer must be the 401 challenge: its key file's contents go into leg 2's
// Authorization header. A success means the agent did not challenge; any other status is
// final (an ordinary http_status error).
MI_DETAIL_NOINLINE Result<bool> arc_answer_challenge(const HttpResponse& leg1, BuiltRequest& built) {
  if (leg1.status == 200 || leg1.status == 202)
    return arc_error({"the agent answered the first request with HTTP ", num(leg1.status),
                      " instead of the 401 challenge; check that IDENTITY_ENDPOINT is the Arc agent"});
  if (leg1.status != 401) return false;
  Result<std::string> path = arc_realm_path(leg1);
  if (!path) return path.error();
  Result<std::string> key = arc_read_key(*path);
  if (!key) return key.error();
  add_pair(built.request.headers, "Authorization", cat({"Basic ", *key}));
  built.secrets.push_back(std::move(*key));
  return true;
}

// docs/protocol.md §3 step 4: a user-assigned request must be echoed back, or the agent ignored it.
bool arc_echoes_identity(const ID& id, const TokenEcho& echo) {
  switch (id.kind()) {
    case IDKind::SystemAssigned: return true;
    case IDKind::ClientID: return !echo.client_id.empty() && iequals(echo.client_id, id.value());
    case IDKind::ObjectID: return !echo.object_id.empty() && iequals(echo.object_id, id.value());
    case IDKind::ResourceID:
      return (!echo.msi_res_id.empty() && iequals(echo.msi_res_id, id.value())) ||
             (!echo.mi_res_id.empty() && iequals(echo.mi_res_id, id.value()));
  }
  return false;
}

Result<bool> arc_confirm_identity(const ID& id, const TokenEcho& echo) {
  if (arc_echoes_identity(id, echo)) return true;
  return arc_error({"the agent did not confirm the requested ", id_kind_label(id.kind()),
                    " in its token response; the agent is likely too old for user-assigned identities and "
                    "returned the system-assigned one (update the Azure Connected Machine agent)"});
}

}  // namespace
}  // namespace detail

Source GetSource() { return detail::detect_source(); }

}  // namespace v1
}  // namespace mi
