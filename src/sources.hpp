// The six sources: detection from the environment (docs/protocol.md §1), which identities
// each accepts (§2), how each builds its request (§2), and the Azure Arc
// challenge's key file and identity confirmation (§3).

namespace mi {
inline namespace v1 {
namespace detail {

constexpr const char* kUserAgent = "managed-identity-cpp/" MI_VERSION_STRING;
constexpr const char* kImdsEndpoint = "http://169.254.169.254/metadata/identity/oauth2/token";
constexpr const char* kImdsPath = "/metadata/identity/oauth2/token";
constexpr const char* kArcDefaultEndpoint = "http://127.0.0.1:40342/metadata/identity/oauth2/token";
constexpr size_t kArcMaxKeyBytes = 4096;

inline const char* source_label(Source source) {
  switch (source) {
    case Source::DefaultToIMDS: return "IMDS";
    case Source::AppService: return "App Service";
    case Source::AzureArc: return "Azure Arc";
    case Source::CloudShell: return "Cloud Shell";
    case Source::ServiceFabric: return "Service Fabric";
    case Source::AzureML: return "Azure ML";
  }
  return "the managed identity endpoint";
}

// ---- detection -------------------------------------------------------------------

MI_DETAIL_COLD bool file_exists(const std::string& path) {
  if (path.empty()) return false;
#if MI_DETAIL_WINDOWS
  DWORD attributes = GetFileAttributesA(path.c_str());
  return attributes != INVALID_FILE_ATTRIBUTES;
#else
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
#endif
}

// Where the Arc agent's himds executable would be (docs/protocol.md §1 step 4).
MI_DETAIL_COLD std::vector<std::string> arc_himds_paths() {
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

MI_DETAIL_COLD Source detect_source() {
  std::string identity_endpoint = env("IDENTITY_ENDPOINT");
  if (!identity_endpoint.empty() && !env("IDENTITY_HEADER").empty())
    return env("IDENTITY_SERVER_THUMBPRINT").empty() ? Source::AppService : Source::ServiceFabric;
  if (!env("MSI_ENDPOINT").empty()) return env("MSI_SECRET").empty() ? Source::CloudShell : Source::AzureML;
  if (!identity_endpoint.empty() && !env("IMDS_ENDPOINT").empty()) return Source::AzureArc;
  for (const std::string& path : arc_himds_paths())
    if (file_exists(path)) return Source::AzureArc;
  return Source::DefaultToIMDS;
}

// ---- identities ------------------------------------------------------------------------

MI_DETAIL_COLD const char* id_kind_label(IDKind kind) {
  switch (kind) {
    case IDKind::SystemAssigned: return "system-assigned identity";
    case IDKind::ClientID: return "user-assigned client ID";
    case IDKind::ObjectID: return "user-assigned object ID";
    case IDKind::ResourceID: return "user-assigned resource ID";
  }
  return "identity";
}

// docs/protocol.md §2: the source's support for the ID kind first, then an empty value.
MI_DETAIL_COLD bool check_identity(Source source, const ID& id, Error& error) {
  const bool user_assigned = id.kind() != IDKind::SystemAssigned;
  if (user_assigned) {
    std::string why;
    if (source == Source::CloudShell)
      why = "Cloud Shell supports only its system-assigned identity; use mi::SystemAssigned()";
    else if (source == Source::ServiceFabric)
      why = "Service Fabric does not accept a user-assigned identity in the request: the identity is set by the "
            "cluster's resource configuration (https://aka.ms/servicefabricmi); use mi::SystemAssigned()";
    else if (source == Source::AzureML && id.kind() != IDKind::ClientID)
      why = "Azure ML accepts a user-assigned identity by client ID only; use mi::UserAssignedClientID()";
    if (!why.empty()) {
      error = ErrorAccess::make(Errc::unsupported_identity,
                                cat({"a ", id_kind_label(id.kind()), " cannot be used here: ", why}), source);
      return false;
    }
    if (id.value().empty()) {
      error = ErrorAccess::make(Errc::invalid_argument,
                                cat({"the ", id_kind_label(id.kind()),
                                     " is empty; pass the identity's ID, or use mi::SystemAssigned()"}),
                                source);
      return false;
    }
  }
  return true;
}

// The query parameter that carries a user-assigned ID, or nullptr.
const char* id_parameter(Source source, IDKind kind) {
  switch (kind) {
    case IDKind::SystemAssigned: return nullptr;
    case IDKind::ClientID: return source == Source::AzureML ? "clientid" : "client_id";
    case IDKind::ObjectID: return "object_id";
    case IDKind::ResourceID: return source == Source::AppService ? "mi_res_id" : "msi_res_id";
  }
  return nullptr;
}

// ---- endpoints from the environment --------------------------------------------------

// Parses an endpoint URL taken from variable `name`; docs/protocol.md §2: malformed, wrong scheme or a
// control character is invalid_argument. The message names the variable, not the value.
MI_DETAIL_COLD bool endpoint_from(const std::string& value, const char* name, const char* scheme, Source source,
                                  Url& url, Error& error) {
  std::string why;
  Result<Url> parsed = parse_url(value);
  if (has_control_char(value)) {
    why = "it contains a control character";
  } else if (!parsed) {
    why = parsed.error().message();
  } else if (parsed->scheme != scheme) {
    why = cat({"its scheme must be ", scheme, "://"});
  } else {
    url = std::move(*parsed);
    return true;
  }
  error = ErrorAccess::make(Errc::invalid_argument,
                            cat({name, " is not a valid ", scheme, " URL (", why, "); check the ", source_label(source),
                                 " environment"}),
                            source);
  return false;
}

// Reads a secret variable; a control character is invalid_argument (the value is never shown).
MI_DETAIL_COLD bool secret_from(const char* name, Source source, std::string& value, Error& error) {
  value = env(name);
  if (has_control_char(value)) {
    error = ErrorAccess::make(Errc::invalid_argument,
                              cat({name, " contains a control character; check the ", source_label(source),
                                   " environment"}),
                              source);
    return false;
  }
  return true;
}

// AZURE_POD_IDENTITY_AUTHORITY_HOST: a base URL; one trailing '/' dropped, the token path
// appended, http:// assumed without a scheme (docs/protocol.md §2).
MI_DETAIL_COLD std::string imds_endpoint() {
  std::string host = env("AZURE_POD_IDENTITY_AUTHORITY_HOST");
  if (host.empty()) return kImdsEndpoint;
  if (!host.empty() && host.back() == '/') host.pop_back();
  return cat({host.find("://") == std::string::npos ? "http://" : "", host, kImdsPath});
}

// ---- request building -------------------------------------------------------------------

// These two live in fetch_token, which returns from many places: their destructors are out
// of line so that each return calls one function instead of destroying every member inline.
struct RequestExtras {
  std::string request_id;             // IMDS x-ms-client-request-id
  std::string token_sha256;           // Service Fabric token_sha256_to_refresh (with claims)
  const std::vector<std::string>* capabilities = nullptr;  // Service Fabric xms_cc (the client's, not a copy)
  RequestExtras() = default;
  RequestExtras(const RequestExtras&) = delete;
  RequestExtras& operator=(const RequestExtras&) = delete;
  MI_DETAIL_NOINLINE ~RequestExtras();
};
RequestExtras::~RequestExtras() = default;

struct BuiltRequest {
  HttpRequest request;
  std::vector<std::string> secrets;  // values that must never appear in a message or log
  BuiltRequest() = default;
  BuiltRequest(const BuiltRequest&) = delete;
  BuiltRequest& operator=(const BuiltRequest&) = delete;
  MI_DETAIL_NOINLINE ~BuiltRequest();
};
BuiltRequest::~BuiltRequest() = default;

// Service Fabric's endpoint and the thumbprint its certificate must match, both fixed at New.
struct PinnedEndpoint {
  Url url;
  std::string pinned_sha1;  // 40 upper-case hex digits (HttpRequest::pinned_sha1)
};

// Builds the one request of an acquisition (Azure Arc: leg 1). Endpoint and secret
// variables are read now, except Service Fabric's endpoint and pin, fixed at New (`fixed_endpoint`).
bool build_request(Source source, const ID& id, std::string_view resource, const RequestExtras& extras,
                   const PinnedEndpoint* fixed_endpoint, BuiltRequest& out, Error& error) {
  HttpRequest& req = out.request;
  req.method = "GET";
  StringPairs params;
  const char* api_version = nullptr;
  Url url;
  std::string endpoint;
  const char* endpoint_name = "IDENTITY_ENDPOINT";
  const char* scheme = "http";
  switch (source) {
    case Source::DefaultToIMDS:
      endpoint = imds_endpoint();
      endpoint_name = "AZURE_POD_IDENTITY_AUTHORITY_HOST";
      api_version = "2018-02-01";
      break;
    case Source::AppService: endpoint = env("IDENTITY_ENDPOINT"); api_version = "2019-08-01"; break;
    case Source::AzureArc:
      endpoint = env("IDENTITY_ENDPOINT");
      if (endpoint.empty()) endpoint = kArcDefaultEndpoint;
      api_version = "2020-06-01";
      break;
    case Source::CloudShell: endpoint = env("MSI_ENDPOINT"); endpoint_name = "MSI_ENDPOINT"; break;
    case Source::ServiceFabric: api_version = "2019-07-01-preview"; scheme = "https"; break;
    case Source::AzureML:
      endpoint = env("MSI_ENDPOINT");
      endpoint_name = "MSI_ENDPOINT";
      api_version = "2017-09-01";
      break;
  }
  if (source == Source::ServiceFabric && fixed_endpoint != nullptr) {
    url = fixed_endpoint->url;
    req.pinned_sha1 = fixed_endpoint->pinned_sha1;  // the transport checks it before the secret goes out
  } else if (!endpoint_from(endpoint, endpoint_name, scheme, source, url, error)) {
    return false;
  }

  if (api_version != nullptr) add_pair(params, "api-version", api_version);
  if (source != Source::CloudShell) add_pair(params, "resource", resource);
  if (source == Source::AzureML) {
    // Always sent: the user-assigned client ID, else DEFAULT_IDENTITY_CLIENT_ID, else empty (as Go).
    add_pair(params, "clientid", id.kind() == IDKind::ClientID ? id.value() : env("DEFAULT_IDENTITY_CLIENT_ID"));
  } else if (const char* name = id_parameter(source, id.kind())) {
    add_pair(params, name, id.value());
  }
  if (source == Source::ServiceFabric) {
    if (!extras.token_sha256.empty()) add_pair(params, "token_sha256_to_refresh", extras.token_sha256);
    if (extras.capabilities != nullptr && !extras.capabilities->empty()) {
      std::string joined;
      for (const std::string& c : *extras.capabilities) {
        if (!joined.empty()) joined += ',';
        joined += c;
      }
      add_pair(params, "xms_cc", joined);
    }
  }
  if (source != Source::CloudShell) url.query = merge_query(url.query, params);
  req.url = url.str();

  add_pair(req.headers, "User-Agent", kUserAgent);
  std::string secret;
  switch (source) {
    case Source::DefaultToIMDS:
      add_pair(req.headers, "Metadata", "true");
      add_pair(req.headers, "x-client-SKU", "managed-identity-cpp");
      add_pair(req.headers, "x-client-Ver", MI_VERSION_STRING);
      add_pair(req.headers, "x-ms-client-request-id", extras.request_id);
      break;
    case Source::AppService:
      if (!secret_from("IDENTITY_HEADER", source, secret, error)) return false;
      add_pair(req.headers, "X-IDENTITY-HEADER", secret);
      break;
    case Source::AzureArc: add_pair(req.headers, "Metadata", "true"); break;
    case Source::CloudShell:
      req.method = "POST";
      add_pair(req.headers, "Metadata", "true");
      add_pair(req.headers, "Content-Type", "application/x-www-form-urlencoded");
      req.body = cat({"resource=", percent_encode(resource)});
      break;
    case Source::ServiceFabric:
      if (!secret_from("IDENTITY_HEADER", source, secret, error)) return false;
      add_pair(req.headers, "Secret", secret);
      add_pair(req.headers, "Accept", "application/json");
      break;
    case Source::AzureML:
      if (!secret_from("MSI_SECRET", source, secret, error)) return false;
      add_pair(req.headers, "secret", secret);
      break;
  }
  if (!secret.empty()) out.secrets.push_back(std::string(secret));
  return true;
}

// ---- Azure Arc challenge (docs/protocol.md §3) -----------------------------------------------------

// The directory the key file must be in, or "" with platform_not_supported.
MI_DETAIL_COLD bool arc_token_dir(std::string& dir, Error& error) {
  (void)error;  // set only where the platform has no Arc agent
#if defined(MI_AZURE_ARC_TOKEN_DIR)
  dir = MI_AZURE_ARC_TOKEN_DIR;
  return true;
#elif MI_DETAIL_WINDOWS
  std::string program_data = env("ProgramData");
  if (program_data.empty()) program_data = "C:\\ProgramData";
  dir = cat({program_data, "\\AzureConnectedMachineAgent\\Tokens"});
  return true;
#elif defined(__linux__)
  dir = "/var/opt/azcmagent/tokens";
  return true;
#else
  dir.clear();
  error = ErrorAccess::make(Errc::platform_not_supported,
                            "Azure Arc managed identity is supported on Linux and Windows only", Source::AzureArc);
  return false;
#endif
}

// The parts are joined into the message.
MI_DETAIL_COLD Error arc_error(std::initializer_list<std::string_view> message) {
  std::string text = "Azure Arc challenge failed: ";
  for (std::string_view part : message) text.append(part.data(), part.size());
  return ErrorAccess::make(Errc::arc_challenge, std::move(text), Source::AzureArc);
}
MI_DETAIL_COLD inline Error arc_error(std::string_view message) { return arc_error({message}); }

// Extracts the key file path from leg 1's WWW-Authenticate header ("Basic realm=<path>",
// the realm optionally quoted, parameters after a comma ignored).
MI_DETAIL_COLD bool arc_realm_path(const HttpResponse& leg1, std::string& path, Error& error) {
  const std::string* header = nullptr;
  for (const auto& h : leg1.headers)
    if (iequals(h.first, "WWW-Authenticate")) {
      header = &h.second;
      break;
    }
  if (header == nullptr || trim(*header).empty()) {
    error = arc_error("the agent's 401 response has no WWW-Authenticate header; is IDENTITY_ENDPOINT the Arc agent?");
    return false;
  }
  std::string_view value = trim(*header);
  const std::string_view basic = "Basic";
  std::string_view rest;
  if (value.size() > basic.size() && iequals(value.substr(0, basic.size()), basic) &&
      (value[basic.size()] == ' ' || value[basic.size()] == '\t')) {
    rest = trim(value.substr(basic.size()));
  }
  const std::string_view realm = "realm=";
  if (rest.size() < realm.size() || !iequals(rest.substr(0, realm.size()), realm)) {
    error = arc_error("the WWW-Authenticate header has no 'Basic realm=' naming the key file");
    return false;
  }
  rest.remove_prefix(realm.size());
  if (!rest.empty() && rest.front() == '"') {
    size_t close = rest.find('"', 1);
    if (close == std::string_view::npos) {
      error = arc_error("the WWW-Authenticate realm has an unterminated quote");
      return false;
    }
    path.assign(rest.substr(1, close - 1));
  } else {
    path.assign(trim(rest.substr(0, rest.find(','))));
  }
  if (path.empty()) {
    error = arc_error("the WWW-Authenticate header's realm is empty; it should name the key file");
    return false;
  }
  if (has_control_char(path)) {
    path.clear();
    error = arc_error("the key file path in the WWW-Authenticate realm contains a control character");
    return false;
  }
  return true;
}

// Checks the realm path against the token directory and reads the key file without
// following links or blocking (docs/protocol.md §3 step 2). Never puts the contents in a message.
MI_DETAIL_COLD bool arc_read_key(const std::string& path, std::string& key, Error& error) {
  std::string dir;
  if (!arc_token_dir(dir, error)) return false;
  // The realm comes from the endpoint: quote at most 200 bytes of it in messages.
  const std::string shown = path.size() > 200 ? cat({std::string_view(path).substr(0, 200), "..."}) : path;
  if (has_control_char(path)) {
    error = arc_error("the key file path in the realm contains a control character");
    return false;
  }
  if (path.find("..") != std::string::npos) {
    error = arc_error({"the key file path '", shown, "' contains '..'"});
    return false;
  }
#if MI_DETAIL_WINDOWS
  size_t sep = path.find_last_of("\\/");
#else
  size_t sep = path.rfind('/');
#endif
  std::string name = sep == std::string::npos ? path : path.substr(sep + 1);
  if (name.size() <= 4 || !ends_with(name, ".key")) {
    error = arc_error({"the key file '", shown, "' does not have the .key extension"});
    return false;
  }
  if (sep == std::string::npos || path.substr(0, sep) != dir) {
    error = arc_error({"the key file '", shown, "' is not in the agent's token directory ", dir});
    return false;
  }
#if MI_DETAIL_WINDOWS
  HANDLE file = CreateFileA(path.c_str(), GENERIC_READ, FILE_SHARE_READ, nullptr, OPEN_EXISTING,
                            FILE_FLAG_OPEN_REPARSE_POINT, nullptr);
  if (file == INVALID_HANDLE_VALUE) {
    DWORD code = GetLastError();
    // A directory cannot be opened this way (access denied): say what it is, not to run as admin.
    DWORD attributes = code == ERROR_ACCESS_DENIED ? GetFileAttributesA(path.c_str()) : INVALID_FILE_ATTRIBUTES;
    if (attributes != INVALID_FILE_ATTRIBUTES && (attributes & FILE_ATTRIBUTE_DIRECTORY) != 0)
      error = arc_error({"the key file '", shown, "' is not a regular file"});
    else if (code == ERROR_FILE_NOT_FOUND || code == ERROR_PATH_NOT_FOUND)
      error = arc_error({"the key file '", shown, "' does not exist"});
    else
      error = arc_error({"the key file '", shown, "' could not be opened (error ", num(static_cast<long long>(code)),
                         "); run as an administrator or a member of the 'Hybrid agent extension "
                         "applications' group"});
    return false;
  }
  BY_HANDLE_FILE_INFORMATION info;
  bool regular = GetFileType(file) == FILE_TYPE_DISK && GetFileInformationByHandle(file, &info) &&
                 (info.dwFileAttributes & (FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_REPARSE_POINT)) == 0;
  if (!regular) {
    CloseHandle(file);
    error = arc_error({"the key file '", shown, "' is not a regular file"});
    return false;
  }
  uint64_t size = (static_cast<uint64_t>(info.nFileSizeHigh) << 32) | info.nFileSizeLow;
  if (size > kArcMaxKeyBytes) {
    CloseHandle(file);
    error = arc_error({"the key file '", shown, "' is larger than 4096 bytes"});
    return false;
  }
  key.assign(static_cast<size_t>(size), '\0');
  DWORD got = 0;
  bool ok = size == 0 || (ReadFile(file, &key[0], static_cast<DWORD>(size), &got, nullptr) && got == size);
  CloseHandle(file);
#else
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT)
      error = arc_error({"the key file '", shown, "' does not exist"});
    else if (err == ELOOP)
      error = arc_error({"the key file '", shown, "' is a symbolic link, which is not followed"});
    else
      error = arc_error({"the key file '", shown, "' could not be opened (", std::strerror(err),
                         "); the process must run as root or in the himds group"});
    return false;
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    error = arc_error({"the key file '", shown, "' is not a regular file"});
    return false;
  }
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) > kArcMaxKeyBytes) {
    ::close(fd);
    error = arc_error({"the key file '", shown, "' is larger than 4096 bytes"});
    return false;
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
  if (ok && total > kArcMaxKeyBytes) {
    error = arc_error({"the key file '", shown, "' is larger than 4096 bytes"});
    return false;
  }
  key.assign(buffer, total);
  std::memset(buffer, 0, sizeof buffer);
#endif
  if (!ok) {
    key.clear();
    error = arc_error({"the key file '", shown, "' could not be read"});
    return false;
  }
  // The contents go into a header value as they are: an empty key would send a bare
  // "Basic ", and a control byte (a trailing newline from an editor, say) or a non-ASCII
  // one cannot be sent at all. Neither is a key the agent wrote.
  const char* problem = key.empty() ? "' is empty" : nullptr;
  for (char ch : key)
    if (ch < 0x20 || ch > 0x7e) problem = "' holds a byte outside printable ASCII (a trailing newline, for instance)";
  if (problem != nullptr) {
    std::fill(key.begin(), key.end(), '\0');
    key.clear();
    error = arc_error({"the key file '", shown, problem});
    return false;
  }
  return true;
}

// docs/protocol.md §3 step 4: a user-assigned request must be echoed back, or the agent ignored it.
MI_DETAIL_COLD bool arc_confirms_identity(const ID& id, const TokenResponse& token) {
  switch (id.kind()) {
    case IDKind::SystemAssigned: return true;
    case IDKind::ClientID: return !token.client_id.empty() && iequals(token.client_id, id.value());
    case IDKind::ObjectID: return !token.object_id.empty() && iequals(token.object_id, id.value());
    case IDKind::ResourceID:
      return (!token.msi_res_id.empty() && iequals(token.msi_res_id, id.value())) ||
             (!token.mi_res_id.empty() && iequals(token.mi_res_id, id.value()));
  }
  return false;
}

}  // namespace detail

Source GetSource() { return detail::detect_source(); }

}  // namespace v1
}  // namespace mi
