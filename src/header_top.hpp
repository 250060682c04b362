// SPDX-License-Identifier: MIT
//
// managed_identity.hpp -- Azure managed identity tokens for C++17, in one header.
//
// Gets OAuth access tokens for the managed identity of the Azure resource the
// program runs on (VM, App Service, Functions, Arc server, Cloud Shell, Service
// Fabric, Azure ML, AKS pod with workload identity), with no secret in the program.
// Mirrors MSAL for Go's `apps/managedidentity` package.
//
// USING THE HEADER
//   In exactly ONE .cpp file of the program (never in a header):
//       #define MI_IMPLEMENTATION
//       #include "managed_identity.hpp"
//   Everywhere else just #include "managed_identity.hpp" for the declarations.
//   With CMake, link mi::managed_identity_impl instead and define nothing.
//
// QUICK START
//   auto client = mi::New(mi::SystemAssigned());   // or mi::UserAssignedClientID("...")
//   if (!client) { puts(client.error().message().c_str()); return 1; }
//   auto token = client->AcquireToken(mi::Context::Background(),
//                                     "https://vault.azure.net");
//   if (!token) { puts(token.error().message().c_str()); return 1; }
//   send_with_header("Authorization: Bearer " + token->access_token);
//   // Tokens are cached process-wide and refreshed before they expire:
//   // call AcquireToken before every use, it is cheap on a cache hit.
//
// CONFIGURATION (every macro has a default; "all TUs" = must be identical in
// every translation unit that includes the header, "impl TU" = only matters in
// the one that defines MI_IMPLEMENTATION)
//   MI_IMPLEMENTATION        impl TU   compile the implementation here
//   MI_NO_EXCEPTIONS         all TUs   never throw (auto-detected from -fno-exceptions);
//                                      Result::value() on an error then aborts
//   MI_USE_CURL              impl TU   HTTPS through libcurl (Service Fabric, workload identity);
//                                      libcurl must use OpenSSL; builds with the libcurl
//                                      and OpenSSL headers; libcurl is loaded with dlopen
//                                      at the first HTTPS request (POSIX; -ldl on old glibc)
//   MI_CURL_LINKED           impl TU   with MI_USE_CURL: link libcurl instead of loading it
//                                      (-lcurl -lssl -lcrypto; static builds; always so
//                                      on Windows)
//   MI_CURL_LIBRARY          impl TU   with MI_USE_CURL: the library to load, a string
//                                      literal ("libcurl.so.4" then "libcurl.so";
//                                      macOS "libcurl.4.dylib")
//   MI_MAX_RESPONSE_BYTES    impl TU   largest accepted response body (1 MiB)
//   MI_MAX_HEADER_BYTES      impl TU   largest accepted response head (64 KiB)
//   MI_AZURE_ARC_TOKEN_DIR   impl TU   directory the Arc key file must be in
//                                      (platform default; for tests)
//   MI_AZURE_ARC_HIMDS_PATH  impl TU   file whose presence means "Arc agent installed"
//                                      (platform default; for tests)
//
// TRANSPORTS
//   http:// endpoints (IMDS, App Service, Arc, Cloud Shell, Azure ML) use a small
//   HTTP/1.1 client over POSIX or WinSock sockets: no proxy, no redirects, bounded
//   sizes and times. https:// (Service Fabric, workload identity) needs MI_USE_CURL;
//   only workload identity's Entra ID requests honour HTTPS_PROXY / NO_PROXY, and
//   mi::WithCAFile("ca.pem") adds trust anchors to the system store for them (a
//   TLS-inspecting proxy's CA, a local emulator's). Any transport can be replaced
//   with mi::WithHTTPClient(std::shared_ptr<mi::HttpClient>).
//
// SOURCES (seven; detected from the environment by mi::GetSource(), once per
// client; the first that matches, in this order)
//   WorkloadIdentity  AZURE_FEDERATED_TOKEN_FILE + AZURE_TENANT_ID (AKS; checked first;
//                  AZURE_CLIENT_ID, AZURE_AUTHORITY_HOST, AZURE_KUBERNETES_TOKEN_PROXY)
//   ServiceFabric  IDENTITY_ENDPOINT + IDENTITY_HEADER + IDENTITY_SERVER_THUMBPRINT
//   AppService     IDENTITY_ENDPOINT + IDENTITY_HEADER
//   AzureML        MSI_ENDPOINT + MSI_SECRET (+ DEFAULT_IDENTITY_CLIENT_ID)
//   CloudShell     MSI_ENDPOINT
//   AzureArc       IDENTITY_ENDPOINT + IMDS_ENDPOINT, or the Arc agent installed
//   DefaultToIMDS  otherwise; AZURE_POD_IDENTITY_AUTHORITY_HOST overrides the host
//
// THREAD SAFETY
//   mi::Client, mi::Context and the token cache may be used from any number of
//   threads. Concurrent cache misses for one token make one request.
//
// ERRORS AND LOGGING
//   Nothing throws. Calls return mi::Result<T>; on failure .error() is an
//   mi::Error with a code (mi::Errc), a message saying what to fix, the HTTP
//   status, the endpoint's error code, description and correlation id.
//   mi::WithLogger receives diagnostics. Neither ever contains a token or secret.
//
// SECURITY NOTES
//   Checked: Service Fabric's server certificate is pinned to
//   IDENTITY_SERVER_THUMBPRINT during the handshake; Entra ID's certificate chain
//   and host name are validated (system store plus mi::WithCAFile); Arc key files must be
//   regular files of at most 4096 bytes in the agent's token directory; every
//   value put in a URL is percent-encoded; response sizes are bounded.
//   Not checked: that a plain-http metadata endpoint is genuine (nothing can be).
//
// LICENSE: MIT. Copyright (c) 2026 the managed_identity.hpp authors.

// ---- configuration, normalised once ---------------------------------------
// Every configuration macro is read here and nowhere else: the rest of the header
// tests only the MI_DETAIL_* values below. They are set again on every inclusion
// (a second inclusion may compile the implementation) and undefined at the end,
// so none of them reaches the includer.

// Exceptions: on unless the compiler has them off or MI_NO_EXCEPTIONS is defined.
#if defined(MI_NO_EXCEPTIONS) || !(defined(__cpp_exceptions) || defined(__EXCEPTIONS) || defined(_CPPUNWIND))
#define MI_DETAIL_EXCEPTIONS 0
#else
#define MI_DETAIL_EXCEPTIONS 1
#endif

#if defined(_MSVC_LANG)
#define MI_DETAIL_CPLUSPLUS _MSVC_LANG
#else
#define MI_DETAIL_CPLUSPLUS __cplusplus
#endif
#if MI_DETAIL_CPLUSPLUS < 201703L
#error "managed_identity.hpp needs C++17 or later (use -std=c++17 or /std:c++17)"
#endif

#if defined(_WIN32)
#define MI_DETAIL_WINDOWS 1
#else
#define MI_DETAIL_WINDOWS 0
#endif

// HTTPS through libcurl: loaded with dlopen at the first HTTPS request, unless the
// program links it (MI_CURL_LINKED; always so on Windows, which has no dlopen).
#if defined(MI_CURL_LINKED) && !defined(MI_USE_CURL)
#error "MI_CURL_LINKED only chooses how MI_USE_CURL gets libcurl: define MI_USE_CURL too"
#endif
#if defined(MI_USE_CURL)
#define MI_DETAIL_CURL 1
#else
#define MI_DETAIL_CURL 0
#endif
#if defined(MI_USE_CURL) && (defined(MI_CURL_LINKED) || defined(_WIN32))
#define MI_DETAIL_CURL_LINKED 1
#else
#define MI_DETAIL_CURL_LINKED 0
#endif
