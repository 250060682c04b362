#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include "heap_bytes.hpp"
#include "loopback_server.hpp"

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

using mi::Errc;
using mi::HttpRequest;
using mi::HttpResponse;
using mi::detail::merge_query;
using mi::detail::parse_url;
using mi::detail::ResponseParser;
using mi::detail::serialize_request;
using mi::detail::SocketTransport;
using mi::detail::Url;
using Params = std::vector<std::pair<std::string, std::string>>;
using Status = ResponseParser::Status;

namespace {

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

Url must_parse(const std::string& text) {
  mi::Result<Url> url = parse_url(text);
  INFO("url: " << text << " why: " << (url ? std::string() : url.error().message()));
  REQUIRE(url.ok());
  return *url;
}

std::string reject_reason(const std::string& text) {
  mi::Result<Url> url = parse_url(text);
  INFO("url: " << text);
  REQUIRE_FALSE(url.ok());
  CHECK(url.error().code() == Errc::invalid_argument);
  CHECK_FALSE(url.error().message().empty());
  return url.error().message();
}

// serialize_request's bytes, or "" with the error in `why`.
std::string wire(const HttpRequest& request, std::string& why) {
  mi::Result<mi::detail::WireRequest> out = serialize_request(request);
  why = out ? std::string() : out.error().message();
  if (out) CHECK(out->url.str() == must_parse(request.url).str());
  return out ? out->bytes : std::string();
}

// Feeds `raw` whole or one byte at a time; calls finish() when the parser still
// wants more and `close` is set (the peer closed after sending it).
struct Parsed {
  Status status = Status::need_more;
  HttpResponse response;
  Errc code = Errc::invalid_argument;
  std::string message;
};

Parsed parse(const std::string& raw, bool bytewise, bool close = true, size_t max_head = MI_MAX_HEADER_BYTES,
             size_t max_body = MI_MAX_RESPONSE_BYTES) {
  ResponseParser parser(max_head, max_body);
  Parsed out;
  if (bytewise) {
    for (size_t i = 0; i < raw.size() && out.status == Status::need_more; ++i) out.status = parser.feed(&raw[i], 1);
  } else {
    out.status = parser.feed(raw.data(), raw.size());
  }
  if (out.status == Status::need_more && close) out.status = parser.finish();
  if (out.status == Status::done) out.response = parser.response();
  if (out.status == Status::error) {
    out.code = parser.error().code();
    out.message = parser.error().message();
  }
  return out;
}

std::string header(const HttpResponse& response, const std::string& name) {
  for (const auto& h : response.headers)
    if (mi::detail::iequals(h.first, name)) return h.second;
  return "<none>";
}

long long ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
}

HttpRequest get(const std::string& url, Params headers = {}) {
  HttpRequest r;
  r.method = "GET";
  r.url = url;
  r.headers = std::move(headers);
  return r;
}

}  // namespace

// ---- URLs ----------------------------------------------------------------------

TEST_CASE("parse_url: valid forms") {
  Url u = must_parse("http://127.0.0.1:40342/metadata/identity/oauth2/token?api-version=2020-06-01");
  CHECK(u.scheme == "http");
  CHECK(u.host == "127.0.0.1");
  CHECK(u.port == 40342);
  CHECK(u.path == "/metadata/identity/oauth2/token");
  CHECK(u.query == "api-version=2020-06-01");
  CHECK(u.target() == "/metadata/identity/oauth2/token?api-version=2020-06-01");
  CHECK(u.host_header() == "127.0.0.1:40342");
  CHECK(u.authority() == "127.0.0.1:40342");
  CHECK(u.str() == "http://127.0.0.1:40342/metadata/identity/oauth2/token?api-version=2020-06-01");

  u = must_parse("HTTP://Example.COM");
  CHECK(u.scheme == "http");
  CHECK(u.host == "example.com");
  CHECK(u.port == 80);
  CHECK(u.path == "/");
  CHECK(u.query.empty());
  CHECK(u.target() == "/");
  CHECK(u.host_header() == "example.com");
  CHECK(u.authority() == "example.com:80");

  u = must_parse("hTTpS://vault.example.net/a/b");
  CHECK(u.scheme == "https");
  CHECK(u.port == 443);
  CHECK(u.host_header() == "vault.example.net");
  CHECK(u.path == "/a/b");

  CHECK(must_parse("http://h:80/").host_header() == "h");
  CHECK(must_parse("https://h:80/").host_header() == "h:80");
  CHECK(must_parse("http://h:443/").host_header() == "h:443");
  CHECK(must_parse("http://h:/p").port == 80);  // an empty port is the default (RFC 3986)
  CHECK(must_parse("http://h:65535/").port == 65535);
  CHECK(must_parse("http://h:00080/").port == 80);

  u = must_parse("http://h?x=1&y=%20");
  CHECK(u.path == "/");
  CHECK(u.query == "x=1&y=%20");
  CHECK(u.target() == "/?x=1&y=%20");

  u = must_parse("http://h/p#frag?not=query");
  CHECK(u.path == "/p");
  CHECK(u.query.empty());
  u = must_parse("http://h#f");
  CHECK(u.path == "/");
  u = must_parse("http://h/p?q=1#f");
  CHECK(u.query == "q=1");
  u = must_parse("http://h/p?");
  CHECK(u.query.empty());
  CHECK(u.target() == "/p");

  u = must_parse("http://[::1]:8080/p?q");
  CHECK(u.host == "::1");
  CHECK(u.port == 8080);
  CHECK(u.host_header() == "[::1]:8080");
  CHECK(u.authority() == "[::1]:8080");
  CHECK(u.target() == "/p?q");
  CHECK(u.str() == "http://[::1]:8080/p?q");

  u = must_parse("http://[FE80::A:1]/");
  CHECK(u.host == "fe80::a:1");
  CHECK(u.host_header() == "[fe80::a:1]");
  CHECK(must_parse("http://[::ffff:127.0.0.1]/").host == "::ffff:127.0.0.1");
  CHECK(must_parse("http://[1:2:3:4:5:6:7:8]/").host == "1:2:3:4:5:6:7:8");
  CHECK(must_parse("http://[1::]/").host == "1::");
  CHECK(must_parse("http://[::]/").host == "::");
  CHECK(must_parse("http://[1:2:3:4:5:6:1.2.3.4]/").port == 80);
  CHECK(must_parse("http://my_host-1.example~x/").host == "my_host-1.example~x");
}

TEST_CASE("parse_url: rejections") {
  CHECK(contains(reject_reason("ftp://h/"), "http"));
  CHECK(contains(reject_reason("file:///etc/passwd"), "http"));
  reject_reason("h/path");
  reject_reason("//h/path");
  reject_reason("http:/h");
  reject_reason("http:h");
  reject_reason("://h");
  CHECK(contains(reject_reason("http://"), "host"));
  CHECK(contains(reject_reason("http:///path"), "host"));
  CHECK(contains(reject_reason("http://:80/"), "host"));
  CHECK(contains(reject_reason("http://?q"), "host"));
  std::string why = reject_reason("http://user:pa55word@h/");
  CHECK(contains(why, "user"));
  CHECK_FALSE(contains(why, "pa55word"));
  reject_reason("http://user@h/");
  reject_reason("http://@h/");
  CHECK(contains(reject_reason("http://h:0/"), "port"));
  CHECK(contains(reject_reason("http://h:70000/"), "port"));
  CHECK(contains(reject_reason("http://h:65536/"), "port"));
  CHECK(contains(reject_reason("http://h:123456/"), "port"));
  CHECK(contains(reject_reason("http://h:8a/"), "port"));
  CHECK(contains(reject_reason("http://h:-1/"), "port"));
  CHECK(contains(reject_reason("http://h:+80/"), "port"));
  reject_reason("http://h:80:80/");
  reject_reason("http://h /");
  reject_reason(" http://h/");
  reject_reason("http://h/a b");
  reject_reason("http://h/?a=b c");
  reject_reason("http://h/\r\nX-Injected: 1");
  reject_reason("http://h/\n");
  reject_reason("http://h\t/");
  reject_reason(std::string("http://h/\0", 10));
  reject_reason("http://h/\x7f");
  reject_reason("http://h/caf\xc3\xa9");
  reject_reason("http://h\xc3\xa9.example/");
  reject_reason("http://a!b/");
  reject_reason("http://a%41/");
  CHECK(contains(reject_reason("http://[::1/"), "IPv6"));
  CHECK(contains(reject_reason("http://[::1]x/"), "IPv6"));
  CHECK(contains(reject_reason("http://[1:2:3:4:5:6:7:8:9]/"), "IPv6"));
  CHECK(contains(reject_reason("http://[1:2:3:4:5:6:7]/"), "IPv6"));
  CHECK(contains(reject_reason("http://[12345::]/"), "IPv6"));
  CHECK(contains(reject_reason("http://[::1::]/"), "IPv6"));
  CHECK(contains(reject_reason("http://[1:::2]/"), "IPv6"));
  CHECK(contains(reject_reason("http://[:1::2]/"), "IPv6"));
  CHECK(contains(reject_reason("http://[1::2:]/"), "IPv6"));
  CHECK(contains(reject_reason("http://[g::1]/"), "IPv6"));
  CHECK(contains(reject_reason("http://[]/"), "IPv6"));
  CHECK(contains(reject_reason("http://[::ffff:1.2.3.256]/"), "IPv6"));
  CHECK(contains(reject_reason("http://[::ffff:1.2.3]/"), "IPv6"));
  CHECK(contains(reject_reason("http://[::ffff:01.2.3.4]/"), "IPv6"));
  CHECK(contains(reject_reason("http://[1:2:3:4:5:6:7:1.2.3.4]/"), "IPv6"));
  CHECK(contains(reject_reason("http://[fe80::1%25eth0]/"), "IPv6"));
}

TEST_CASE("merge_query") {
  CHECK(merge_query("", {{"api-version", "2018-02-01"}, {"resource", "https://vault.azure.net"}}) ==
        "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net");
  // Existing parameters are kept, same-named ones replaced (all of them), everything sorted by name.
  CHECK(merge_query("b=1&a=2", {{"c", "3"}}) == "a=2&b=1&c=3");
  CHECK(merge_query("api-version=old&x=1&api-version=older", {{"api-version", "new"}}) == "api-version=new&x=1");
  CHECK(merge_query("z=1&resource=evil", {{"resource", "r"}, {"api-version", "v"}}) ==
        "api-version=v&resource=r&z=1");
  // Values of one name keep their order (stable sort), as Go's url.Values.Encode does.
  CHECK(merge_query("a=2&b=0&a=1", {}) == "a=2&a=1&b=0");
  CHECK(merge_query("", {{"x", "2"}, {"x", "1"}}) == "x=2&x=1");
  // Decoding of the existing query: '+' is a space, %XX decoded, then re-encoded.
  CHECK(merge_query("q=a+b&r=%2f%41&s=a/b", {}) == "q=a%20b&r=%2FA&s=a%2Fb");
  CHECK(merge_query("flag&&=v&", {}) == "=v&flag=");
  CHECK(merge_query("bad=%zz", {}) == "bad=%25zz");
  // Encoding: only RFC 3986 unreserved characters stay.
  CHECK(merge_query("", {{"v", "a b&c#d=e/f:g?h+i%j"}}) == "v=a%20b%26c%23d%3De%2Ff%3Ag%3Fh%2Bi%25j");
  CHECK(merge_query("", {{"v", "AZaz09-._~"}}) == "v=AZaz09-._~");
  CHECK(merge_query("", {{"v", "caf\xc3\xa9"}}) == "v=caf%C3%A9");
  CHECK(merge_query("", {{"v", "x\r\nHost: evil"}}) == "v=x%0D%0AHost%3A%20evil");
  CHECK(merge_query("", {{"n a&m", "1"}}) == "n%20a%26m=1");
  CHECK(merge_query("", {}).empty());
  CHECK(merge_query("", {{"client_id", ""}}) == "client_id=");
}

// ---- request serialisation ----------------------------------------------------------

TEST_CASE("serialize_request: exact bytes") {
  std::string out, why;
  HttpRequest r = get("http://10.0.0.1/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x",
                      {{"Metadata", "true"}, {"User-Agent", "managed-identity-cpp/0.1.0"}});
  out = wire(r, why);
  REQUIRE_MESSAGE(why.empty(), why);
  CHECK(out ==
        "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=x HTTP/1.1\r\n"
        "Host: 10.0.0.1\r\n"
        "Metadata: true\r\n"
        "User-Agent: managed-identity-cpp/0.1.0\r\n"
        "Connection: close\r\n"
        "\r\n");

  HttpRequest post;
  post.method = "POST";
  post.url = "http://127.0.0.1:50342/oauth2/token";
  post.headers = {{"Content-Type", "application/x-www-form-urlencoded"}, {"Metadata", "true"}};
  post.body = "resource=https%3A%2F%2Fvault.azure.net";
  out = wire(post, why);
  REQUIRE_MESSAGE(why.empty(), why);
  CHECK(out ==
        "POST /oauth2/token HTTP/1.1\r\n"
        "Host: 127.0.0.1:50342\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "Metadata: true\r\n"
        "Content-Length: 38\r\n"
        "Connection: close\r\n"
        "\r\n"
        "resource=https%3A%2F%2Fvault.azure.net");

  post.body.clear();  // POST always carries Content-Length
  out = wire(post, why);
  REQUIRE_MESSAGE(why.empty(), why);
  CHECK(contains(out, "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));

  HttpRequest ipv6 = get("http://[::1]:8080/x");
  out = wire(ipv6, why);
  REQUIRE_MESSAGE(why.empty(), why);
  CHECK(out == "GET /x HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n");

  // The transport owns the framing headers: the request's own copies are dropped.
  HttpRequest framing = get("http://h/", {{"Host", "evil"}, {"content-length", "99"}, {"Transfer-Encoding", "chunked"},
                                          {"Connection", "keep-alive"}, {"X-Kept", "1"}});
  out = wire(framing, why);
  REQUIRE_MESSAGE(why.empty(), why);
  CHECK(out == "GET / HTTP/1.1\r\nHost: h\r\nX-Kept: 1\r\nConnection: close\r\n\r\n");
}

TEST_CASE("serialize_request: nothing can split a request") {
  std::string out, why;
  for (const char* value : {"v\r\nX-Injected: 1", "v\nX", "v\rX", "tab\there", "nul\0x", "del\x7f"}) {
    std::string v = std::string(value) == "nul" ? std::string("nul\0x", 5) : std::string(value);
    HttpRequest r = get("http://h/", {{"X-IDENTITY-HEADER", "s3cr3t-" + v}});
    CAPTURE(v);
    out = wire(r, why);
    CHECK_FALSE(why.empty());
    CHECK(out.empty());
    CHECK(contains(why, "X-IDENTITY-HEADER"));
    CHECK_FALSE(contains(why, "s3cr3t"));
    CHECK_FALSE(contains(why, "Injected"));
  }
  for (std::string name : {"X-A\r\nB", "X A", "X:A", "", "X\x01", "X\xc3\xa9"}) {
    HttpRequest r = get("http://h/", {{name, "secret-value"}});
    CAPTURE(name);
    out = wire(r, why);
    CHECK_FALSE(why.empty());
    CHECK_FALSE(contains(why, "secret-value"));
    CHECK_FALSE(contains(why, "\r"));
    CHECK_FALSE(contains(why, "\n"));
  }
  for (std::string method : {"", "GE T", "GET\r\n", "G\x01"}) {
    HttpRequest r = get("http://h/");
    r.method = method;
    CAPTURE(method);
    out = wire(r, why);
    CHECK_FALSE(why.empty());
  }
  // The target and the Host header come from the request's URL, parsed here and nowhere
  // else: one that would split the request never becomes a Url.
  for (std::string bad : {"http://h/x\r\nX-Injected: 1", "http://h\r\n/", "http://h/?a=b\r\nX-Injected: 1"}) {
    CAPTURE(bad);
    out = wire(get(bad), why);
    CHECK(out.empty());
    CHECK(contains(why, "the endpoint URL is invalid"));
    CHECK_FALSE(contains(why, "Injected"));
  }
}

// ---- response parsing ---------------------------------------------------------------

TEST_CASE("ResponseParser: accepted responses, whole and byte by byte") {
  for (bool bytewise : {false, true}) {
    CAPTURE(bytewise);
    {
      INFO("Content-Length");
      Parsed p = parse("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncOnTeNt-LeNgTh: 13\r\n\r\n{\"a\":\"b c\"}\r\n",
                       bytewise, false);
      REQUIRE(p.status == Status::done);
      CHECK(p.response.status == 200);
      CHECK(p.response.body == "{\"a\":\"b c\"}\r\n");
      REQUIRE(p.response.headers.size() == 2);
      CHECK(p.response.headers[0] == std::make_pair(std::string("Content-Type"), std::string("application/json")));
      CHECK(p.response.headers[1].first == "cOnTeNt-LeNgTh");  // names keep their case
    }
    {
      INFO("bytes after the response are ignored");
      Parsed p = parse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE", bytewise, false);
      REQUIRE(p.status == Status::done);
      CHECK(p.response.body == "ok");
    }
    {
      INFO("OWS trimmed, empty values, bare LF line ends, empty reason");
      Parsed p = parse("HTTP/1.1 404 \r\nX-A:   spaced \t \r\nX-Empty:\r\nX-Lf: 1\nContent-Length: 0\r\n\r\n",
                       bytewise, false);
      REQUIRE(p.status == Status::done);
      CHECK(p.response.status == 404);
      CHECK(header(p.response, "x-a") == "spaced");
      CHECK(header(p.response, "X-Empty") == "");
      CHECK(header(p.response, "X-Lf") == "1");
      CHECK(p.response.body.empty());
    }
    {
      INFO("status line without a reason");
      Parsed p = parse("HTTP/1.1 500\r\nContent-Length: 1\r\n\r\nx", bytewise, false);
      REQUIRE(p.status == Status::done);
      CHECK(p.response.status == 500);
    }
    {
      INFO("duplicate identical Content-Length");
      Parsed p = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 03\r\nContent-Length: 3, 3\r\n\r\nabc",
                       bytewise, false);
      REQUIRE(p.status == Status::done);
      CHECK(p.response.body == "abc");
    }
    {
      INFO("chunked with extensions and trailers");
      Parsed p = parse(
          "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"
          "5;name=value;quoted=\"a b\"\r\nhello\r\n"
          "1 ; ext\r\n \r\n"
          "00000000000000000000006\r\nworld!\r\n"
          "A\r\n0123456789\r\n"
          "0;last\r\nX-Trailer: t\r\nServer-Timing: 1\r\n\r\n",
          bytewise, false);
      REQUIRE(p.status == Status::done);
      CHECK(p.response.body == "hello world!0123456789");
      CHECK(header(p.response, "X-Trailer") == "<none>");  // trailers are dropped
    }
    {
      INFO("chunked, no trailers, hex in upper and lower case");
      Parsed p = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n"
                       "1A\r\nABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n0\r\n\r\n",
                       bytewise, false);
      REQUIRE(p.status == Status::done);
      CHECK(p.response.body == "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ");
    }
    {
      INFO("close-delimited");
      Parsed p = parse("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end\r\n", bytewise, false);
      CHECK(p.status == Status::need_more);
      p = parse("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end\r\n", bytewise, true);
      REQUIRE(p.status == Status::done);
      CHECK(p.response.body == "until the end\r\n");
      p = parse("HTTP/1.1 200 OK\r\n\r\n", bytewise, true);
      REQUIRE(p.status == Status::done);
      CHECK(p.response.body.empty());
    }
    {
      INFO("100 Continue and 103 Early Hints are skipped");
      Parsed p = parse(
          "HTTP/1.1 100 Continue\r\n\r\n"
          "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
          "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
          bytewise, false);
      REQUIRE(p.status == Status::done);
      CHECK(p.response.status == 200);
      CHECK(p.response.body == "ok");
      REQUIRE(p.response.headers.size() == 1);
      CHECK(header(p.response, "Link") == "<none>");
    }
    {
      INFO("204 and 304 have no body");
      Parsed p = parse("HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", bytewise, false);
      REQUIRE(p.status == Status::done);
      CHECK(p.response.status == 204);
      CHECK(p.response.body.empty());
      p = parse("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", bytewise, false);
      REQUIRE(p.status == Status::done);
      CHECK(p.response.status == 304);
    }
    {
      INFO("HTTP/1.0");
      Parsed p = parse("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", bytewise, false);
      REQUIRE(p.status == Status::done);
      CHECK(p.response.body == "ok");
      p = parse("HTTP/1.0 200 OK\r\n\r\nclose-delimited", bytewise, true);
      REQUIRE(p.status == Status::done);
      CHECK(p.response.body == "close-delimited");
    }
    {
      INFO("bodies exactly at the limits");
      std::string body(1024, 'b');
      Parsed p = parse("HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n" + body, bytewise, false, 1024, 1024);
      REQUIRE(p.status == Status::done);
      CHECK(p.response.body == body);
      p = parse("HTTP/1.1 200 OK\r\n\r\n" + body, bytewise, true, 1024, 1024);
      REQUIRE(p.status == Status::done);
      p = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n" + body.substr(512) + "\r\n200\r\n" +
                    body.substr(512) + "\r\n0\r\n\r\n",
                bytewise, false, 1024, 1024);
      REQUIRE(p.status == Status::done);
      CHECK(p.response.body == body);
      std::string head = "HTTP/1.1 200 OK\r\nX: " + std::string(1024 - 17 - 5 - 2, 'h') + "\r\n\r\n";
      REQUIRE(head.size() == 1024);
      p = parse(head, bytewise, true, 1024, 1024);
      CHECK(p.status == Status::done);
    }
  }
}

TEST_CASE("ResponseParser: rejected responses") {
  struct Case {
    const char* name;
    std::string raw;
    Errc code;
  };
  std::vector<Case> cases = {
      {"conflicting Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
       Errc::invalid_response},
      {"conflicting Content-Length list", "HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nabc", Errc::invalid_response},
      {"Content-Length and chunked", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
       Errc::invalid_response},
      {"chunked and Content-Length", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
       Errc::invalid_response},
      {"negative Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nabc", Errc::invalid_response},
      {"signed Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nabc", Errc::invalid_response},
      {"non-numeric Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nabc", Errc::invalid_response},
      {"hex Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\nabc", Errc::invalid_response},
      {"fractional Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 1.5\r\n\r\nabc", Errc::invalid_response},
      {"empty Content-Length", "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\nabc", Errc::invalid_response},
      {"Content-Length with inner space", "HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\nabc", Errc::invalid_response},
      {"10 GB Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 10737418240\r\n\r\nabc", Errc::invalid_response},
      {"40-digit Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789012345678901234567890\r\n\r\n",
       Errc::invalid_response},
      {"gzip transfer coding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", Errc::invalid_response},
      {"chunked twice", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
       Errc::invalid_response},
      {"identity transfer coding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nabc", Errc::invalid_response},
      {"chunked in HTTP/1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Errc::invalid_response},
      {"bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n", Errc::invalid_response},
      {"signed chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nabcde\r\n0\r\n\r\n",
       Errc::invalid_response},
      {"0x chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nabcde\r\n0\r\n\r\n",
       Errc::invalid_response},
      {"leading space in chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nabcde\r\n0\r\n\r\n",
       Errc::invalid_response},
      {"empty chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", Errc::invalid_response},
      {"junk after chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 x\r\nabcde\r\n0\r\n\r\n",
       Errc::invalid_response},
      {"overflowing chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000001\r\nabc\r\n",
       Errc::invalid_response},
      {"64-bit chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF\r\nabc\r\n",
       Errc::invalid_response},
      {"chunk longer than its size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
       Errc::invalid_response},
      {"control character in chunk extension",
       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;a\x01\r\na\r\n0\r\n\r\n", Errc::invalid_response},
      {"malformed trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nnot a trailer\r\n\r\n",
       Errc::invalid_response},
      {"HTTP/0.9 body", "{\"access_token\":\"abc\",\"expires_in\":3600}", Errc::invalid_response},
      {"HTTP/0.9 body with newline", "{\"access_token\":\"abc\"}\r\n", Errc::invalid_response},
      {"garbage", "garbage\r\n\r\n", Errc::invalid_response},
      {"lowercase http", "http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Errc::invalid_response},
      {"HTTP/2", "HTTP/2 200\r\nContent-Length: 0\r\n\r\n", Errc::invalid_response},
      {"HTTP/1.2", "HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n", Errc::invalid_response},
      {"HTTP/1.1 without status", "HTTP/1.1\r\n\r\n", Errc::invalid_response},
      {"two-digit status", "HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", Errc::invalid_response},
      {"four-digit status", "HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", Errc::invalid_response},
      {"status out of range", "HTTP/1.1 600 OK\r\nContent-Length: 0\r\n\r\n", Errc::invalid_response},
      {"status 099", "HTTP/1.1 099 OK\r\nContent-Length: 0\r\n\r\n", Errc::invalid_response},
      {"letters in status", "HTTP/1.1 2O0 OK\r\nContent-Length: 0\r\n\r\n", Errc::invalid_response},
      {"two spaces", "HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n", Errc::invalid_response},
      {"control in reason", "HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n", Errc::invalid_response},
      {"101 Switching Protocols", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", Errc::invalid_response},
      {"obs-fold", "HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 0\r\n\r\n", Errc::invalid_response},
      {"obs-fold with tab", "HTTP/1.1 200 OK\r\nX-A: one\r\n\ttwo\r\nContent-Length: 0\r\n\r\n", Errc::invalid_response},
      {"space before colon", "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n", Errc::invalid_response},
      {"no colon", "HTTP/1.1 200 OK\r\nContent-Length 0\r\n\r\n", Errc::invalid_response},
      {"empty header name", "HTTP/1.1 200 OK\r\n: x\r\nContent-Length: 0\r\n\r\n", Errc::invalid_response},
      {"bad header name", "HTTP/1.1 200 OK\r\nX(a): x\r\nContent-Length: 0\r\n\r\n", Errc::invalid_response},
      {"bare CR in a value", "HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n", Errc::invalid_response},
      {"NUL in a value", std::string("HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n", 45),
       Errc::invalid_response},
      {"truncated status line", "HTTP/1.1 20", Errc::network},
      {"nothing at all", "", Errc::network},
      {"truncated headers", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", Errc::network},
      {"truncated body", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", Errc::network},
      {"missing last chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", Errc::network},
      {"truncated chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc", Errc::network},
      {"missing trailer end", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n", Errc::network},
      {"only 100 Continue", "HTTP/1.1 100 Continue\r\n\r\n", Errc::network},
  };
  for (const Case& c : cases) {
    for (bool bytewise : {false, true}) {
      CAPTURE(c.name);
      CAPTURE(bytewise);
      Parsed p = parse(c.raw, bytewise, true);
      REQUIRE(p.status == Status::error);
      CHECK(p.code == c.code);
      CHECK_FALSE(p.message.empty());
      if (c.code == Errc::network)
        CHECK(p.message == "the endpoint closed the connection before the response was complete");
      else
        CHECK(contains(p.message, "invalid HTTP response"));
    }
  }
}

TEST_CASE("ResponseParser: errors fail fast and never quote values or bodies") {
  // Rejected before the whole response is read: no finish() needed.
  CHECK(parse("HTTP/1.1 200 OK\r\nContent-Length: 10737418240\r\n\r\n", false, false).status == Status::error);
  CHECK(parse("{\"access_token\":\"tok", true, false).status == Status::error);
  CHECK(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFF\r\n", false, false).status == Status::error);

  Parsed p = parse("HTTP/1.1 200 OK\r\nX-Secret: top\x01secret\r\n\r\n", false);
  REQUIRE(p.status == Status::error);
  CHECK(contains(p.message, "X-Secret"));
  CHECK_FALSE(contains(p.message, "secret\r"));
  CHECK_FALSE(contains(p.message, "top"));
  p = parse("{\"access_token\":\"eyJ0eXAi\"}", false);
  CHECK_FALSE(contains(p.message, "eyJ0eXAi"));
  p = parse("HTTP/1.1 200 OK\r\nContent-Length: 5, eyJ0eXAi\r\n\r\n", false);
  REQUIRE(p.status == Status::error);
  CHECK_FALSE(contains(p.message, "eyJ0eXAi"));

  // After done or error the parser stays there.
  ResponseParser parser;
  std::string ok = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
  CHECK(parser.feed(ok.data(), ok.size()) == Status::done);
  CHECK(parser.feed("x", 1) == Status::done);
  CHECK(parser.finish() == Status::done);
  ResponseParser bad;
  CHECK(bad.feed("x", 1) == Status::error);
  CHECK(bad.feed(ok.data(), ok.size()) == Status::error);
  CHECK(bad.finish() == Status::error);
  CHECK(bad.error().code() == Errc::invalid_response);
}

TEST_CASE("ResponseParser: limits with bounded memory") {
  const size_t head_limit = 4096, body_limit = 8192, read = 1000;
  // Memory the parser holds: heap bytes this thread gained since just before it was made.
  auto pump = [&](const std::string& head, char fill, size_t max_total) {
    std::string chunk(read, fill);
    const long long before = heap::held();
    ResponseParser parser(head_limit, body_limit);
    Status st = parser.feed(head.data(), head.size());
    size_t fed = head.size();
    while (st == Status::need_more && fed < max_total) {
      st = parser.feed(chunk.data(), chunk.size());
      fed += chunk.size();
      CHECK(heap::held() - before <= static_cast<long long>(head_limit + body_limit + read));
    }
    CHECK(fed <= head_limit + body_limit + 2 * read);
    REQUIRE(st == Status::error);
    CHECK(parser.error().code() == Errc::invalid_response);
    return parser.error().message();
  };
  SUBCASE("endless header line") {
    CHECK(contains(pump("HTTP/1.1 200 OK\r\nX-Endless: ", 'a', 1 << 24), "MI_MAX_HEADER_BYTES"));
  }
  SUBCASE("endless status line") { CHECK(contains(pump("HTTP/1.1 200 ", 'a', 1 << 24), "MI_MAX_HEADER_BYTES")); }
  SUBCASE("endless stream of headers") {
    ResponseParser parser(head_limit, body_limit);
    std::string head = "HTTP/1.1 200 OK\r\n";
    Status st = parser.feed(head.data(), head.size());
    std::string line = "X-A: b\r\n";
    size_t fed = 0;
    while (st == Status::need_more && fed < (1u << 24)) {
      st = parser.feed(line.data(), line.size());
      fed += line.size();
    }
    CHECK(st == Status::error);
    CHECK(fed <= head_limit);
  }
  SUBCASE("endless interim responses") {
    ResponseParser parser(head_limit, body_limit);
    std::string interim = "HTTP/1.1 100 Continue\r\n\r\n";
    Status st = Status::need_more;
    size_t fed = 0;
    while (st == Status::need_more && fed < (1u << 24)) {
      st = parser.feed(interim.data(), interim.size());
      fed += interim.size();
    }
    CHECK(st == Status::error);
    CHECK(fed <= head_limit + interim.size());
  }
  SUBCASE("endless trailers") {
    ResponseParser parser(head_limit, body_limit);
    std::string start = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n";
    Status st = parser.feed(start.data(), start.size());
    std::string line = "X-Trailer: b\r\n";
    size_t fed = 0;
    while (st == Status::need_more && fed < (1u << 24)) {
      st = parser.feed(line.data(), line.size());
      fed += line.size();
    }
    CHECK(st == Status::error);
    CHECK(fed <= head_limit);
  }
  SUBCASE("endless chunk extension") { pump("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;", 'a', 1 << 24); }
  SUBCASE("close-delimited body over the limit") {
    CHECK(contains(pump("HTTP/1.1 200 OK\r\n\r\n", 'b', 1 << 24), "MI_MAX_RESPONSE_BYTES"));
  }
  SUBCASE("chunked body over the limit") {
    std::string head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    std::string chunk = "3E8\r\n" + std::string(1000, 'c') + "\r\n";
    const long long before = heap::held();
    ResponseParser parser(head_limit, body_limit);
    Status st = parser.feed(head.data(), head.size());
    size_t fed = 0;
    while (st == Status::need_more && fed < (1u << 24)) {
      st = parser.feed(chunk.data(), chunk.size());
      fed += 1000;
      CHECK(heap::held() - before <= static_cast<long long>(head_limit + body_limit + read));
    }
    CHECK(st == Status::error);
    CHECK(fed <= body_limit + 1000);
    CHECK(contains(parser.error().message(), "MI_MAX_RESPONSE_BYTES"));
  }
  SUBCASE("declared Content-Length over the limit is rejected before the body") {
    std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 8193\r\n\r\n";
    const long long before = heap::held();
    ResponseParser parser(head_limit, body_limit);
    CHECK(parser.feed(head.data(), head.size()) == Status::error);
    CHECK(contains(parser.error().message(), "MI_MAX_RESPONSE_BYTES"));
    CHECK(heap::held() - before <= static_cast<long long>(head_limit));
  }
  SUBCASE("default limits: 2 MiB body fed in 16 KiB reads") {
    std::string head = "HTTP/1.1 200 OK\r\n\r\n";
    std::string chunk(16 * 1024, 'z');
    const long long before = heap::held();
    ResponseParser parser;
    Status st = parser.feed(head.data(), head.size());
    size_t fed = 0;
    while (st == Status::need_more && fed < 2u * 1024 * 1024) {
      st = parser.feed(chunk.data(), chunk.size());
      fed += chunk.size();
      CHECK(heap::held() - before <=
            static_cast<long long>(size_t(MI_MAX_HEADER_BYTES) + MI_MAX_RESPONSE_BYTES + chunk.size()));
    }
    CHECK(st == Status::error);
    CHECK(fed <= size_t(MI_MAX_RESPONSE_BYTES) + chunk.size());
  }
}

// ---- the socket transport over loopback ----------------------------------------------------

TEST_CASE("SocketTransport: exact request bytes and responses as values") {
  testsrv::Server server([](const testsrv::Request& req) {
    if (req.path == "/404") return testsrv::Reply::http(404, "{\"error\":\"not_found\"}");
    if (req.path == "/302") return testsrv::Reply::http(302, "", {{"Location", "http://127.0.0.1:1/elsewhere"}});
    return testsrv::Reply::http(200, "{\"access_token\":\"x\"}", {{"X-Ms-Request-Id", "abc"}});
  });
  SocketTransport transport;
  mi::Context ctx = mi::Context::Background().WithTimeout(std::chrono::seconds(20));

  HttpRequest r = get(server.url("/metadata/identity/oauth2/token?api-version=2018-02-01&resource=a%20b#frag"),
                      {{"Metadata", "true"}, {"X-IDENTITY-HEADER", "secret"}});
  auto result = transport.Do(ctx, r);
  REQUIRE_MESSAGE(result.ok(), (result.ok() ? "" : result.error().message()));
  CHECK(result->status == 200);
  CHECK(result->body == "{\"access_token\":\"x\"}");
  CHECK(header(*result, "x-ms-request-id") == "abc");
  REQUIRE(server.request_count() == 1);
  std::string host = "127.0.0.1:" + std::to_string(server.port());
  CHECK(server.last().raw ==
        "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=a%20b HTTP/1.1\r\n"
        "Host: " + host + "\r\n"
        "Metadata: true\r\n"
        "X-IDENTITY-HEADER: secret\r\n"
        "Connection: close\r\n"
        "\r\n");

  HttpRequest post;
  post.method = "POST";
  post.url = server.url("/token");
  post.headers = {{"Content-Type", "application/x-www-form-urlencoded"}};
  post.body = "resource=https%3A%2F%2Fmanagement.azure.com";
  result = transport.Do(ctx, post);
  REQUIRE(result.ok());
  CHECK(result->status == 200);
  testsrv::Request seen = server.last();
  CHECK(seen.method == "POST");
  CHECK(seen.target == "/token");
  CHECK(seen.body == post.body);
  CHECK(seen.header("Content-Length") == std::to_string(post.body.size()));
  CHECK(seen.raw == "POST /token HTTP/1.1\r\nHost: " + host +
                        "\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 43\r\n"
                        "Connection: close\r\n\r\nresource=https%3A%2F%2Fmanagement.azure.com");

  result = transport.Do(ctx, get(server.url("/404")));
  REQUIRE(result.ok());
  CHECK(result->status == 404);
  CHECK(result->body == "{\"error\":\"not_found\"}");

  size_t before = server.request_count();
  result = transport.Do(ctx, get(server.url("/302")));
  REQUIRE(result.ok());
  CHECK(result->status == 302);
  CHECK(header(*result, "Location") == "http://127.0.0.1:1/elsewhere");
  CHECK(server.request_count() == before + 1);  // not followed

  // A host name goes through getaddrinfo; every address is tried (localhost may be ::1 first).
  result = transport.Do(ctx, get("http://localhost:" + std::to_string(server.port()) + "/name"));
  REQUIRE_MESSAGE(result.ok(), (result.ok() ? "" : result.error().message()));
  CHECK(result->status == 200);
  CHECK(server.last().header("Host") == "localhost:" + std::to_string(server.port()));
}

TEST_CASE("SocketTransport: framing over the wire") {
  testsrv::Server server([](const testsrv::Request& req) {
    testsrv::Reply reply;
    if (req.path == "/chunked")
      reply.raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n"
                  "3\r\nefg\r\n0\r\nT: 1\r\n\r\n";
    else if (req.path == "/close")
      reply.raw = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close";
    else if (req.path == "/truncated")
      reply.raw = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc";
    else if (req.path == "/nochunkend")
      reply.raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n";
    else if (req.path == "/empty")
      reply.close_now = true;
    else if (req.path == "/huge")  // rejected from the head alone: the body never needs to arrive
      reply.raw = "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(2 * 1024 * 1024) + "\r\n\r\n" +
                  std::string(1000, 'x');
    else if (req.path == "/hugeclose")  // rejected once the body passes the limit
      reply.raw = "HTTP/1.1 200 OK\r\n\r\n" + std::string(MI_MAX_RESPONSE_BYTES + 100 * 1024, 'x');
    else if (req.path == "/http09")
      reply.raw = "{\"access_token\":\"x\"}";
    return reply;
  });
  SocketTransport transport;
  mi::Context ctx = mi::Context::Background().WithTimeout(std::chrono::seconds(20));
  std::string where = "127.0.0.1:" + std::to_string(server.port());

  auto r = transport.Do(ctx, get(server.url("/chunked")));
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message()));
  CHECK(r->status == 200);
  CHECK(r->body == "abcdefg");

  r = transport.Do(ctx, get(server.url("/close")));
  REQUIRE(r.ok());
  CHECK(r->body == "until close");

  for (const char* path : {"/truncated", "/nochunkend", "/empty"}) {
    CAPTURE(path);
    r = transport.Do(ctx, get(server.url(path)));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == Errc::network);
    CHECK(r.error().retryable());
    CHECK(contains(r.error().message(), "closed the connection before the response was complete"));
    CHECK(contains(r.error().message(), where));
  }
  for (const char* path : {"/huge", "/hugeclose", "/http09"}) {
    CAPTURE(path);
    r = transport.Do(ctx, get(server.url(path)));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == Errc::invalid_response);
    CHECK_FALSE(r.error().retryable());
    CHECK(contains(r.error().message(), where));
  }
}

TEST_CASE("SocketTransport: argument errors and HTTPS") {
  SocketTransport transport;
  mi::Context ctx;
  auto r = transport.Do(ctx, get("https://127.0.0.1:1/token"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == Errc::tls);
  CHECK(contains(r.error().message(), "HTTPS needs MI_USE_CURL"));

  for (const char* url : {"", "ftp://127.0.0.1/", "http://user:pw@127.0.0.1/", "http://127.0.0.1:99999/",
                          "http://127.0.0.1/\r\nX: y"}) {
    CAPTURE(url);
    r = transport.Do(ctx, get(url));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == Errc::invalid_argument);
    CHECK_FALSE(contains(r.error().message(), "pw@"));
  }

  testsrv::Server server([](const testsrv::Request&) { return testsrv::Reply::json("{}"); });
  r = transport.Do(ctx, get(server.url(), {{"X-IDENTITY-HEADER", "s3cr3t\r\nX-Injected: 1"}}));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == Errc::invalid_argument);
  CHECK(contains(r.error().message(), "X-IDENTITY-HEADER"));
  CHECK_FALSE(contains(r.error().message(), "s3cr3t"));
  CHECK(server.connection_count() == 0);  // nothing was sent

  mi::Context canceled = mi::Context::Background().WithCancel();
  canceled.Cancel();
  r = transport.Do(canceled, get(server.url()));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == Errc::canceled);
  CHECK(server.connection_count() == 0);
}

TEST_CASE("SocketTransport: connection refused") {
  uint16_t port = 0;
  {
    testsrv::Server closed([](const testsrv::Request&) { return testsrv::Reply::json("{}"); });
    port = closed.port();
  }  // the listener is closed: nothing listens on the port any more
  SocketTransport transport;
  auto start = std::chrono::steady_clock::now();
  auto r = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(20)),
                        get("http://127.0.0.1:" + std::to_string(port) + "/token"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == Errc::network);
  CHECK(r.error().retryable());
  CHECK(r.error().message() == "could not connect to 127.0.0.1:" + std::to_string(port) +
                                   " (connection refused): is the managed identity endpoint running?");
  CHECK(ms_since(start) < 5000);
}

TEST_CASE("SocketTransport: deadlines and cancellation") {
  testsrv::Server server([](const testsrv::Request& req) {
    testsrv::Reply reply;
    if (req.path == "/hang") {
      reply.hang = true;
    } else if (req.path == "/slow") {
      reply.raw = "HTTP/1.1 204 N\r\n\r\n";
      reply.byte_delay_ms = 50;
    } else if (req.path == "/slowbody") {
      reply.raw = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
      reply.byte_delay_ms = 40;
    }
    return reply;
  });
  SocketTransport transport;
  std::string where = "127.0.0.1:" + std::to_string(server.port());

  SUBCASE("a server that never answers: the context's deadline gives timeout") {
    auto start = std::chrono::steady_clock::now();
    auto r = transport.Do(mi::Context::Background().WithTimeout(std::chrono::milliseconds(300)),
                          get(server.url("/hang")));
    long long elapsed = ms_since(start);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == Errc::timeout);
    CHECK(r.error().retryable());
    CHECK(contains(r.error().message(), "waiting for the response from " + where));
    CHECK(elapsed >= 250);
    CHECK(elapsed < 5000);
  }
  SUBCASE("Cancel() from another thread") {
    mi::Context ctx = mi::Context::Background().WithCancel();
    std::thread canceler([ctx] {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      ctx.Cancel();
    });
    auto start = std::chrono::steady_clock::now();
    auto r = transport.Do(ctx, get(server.url("/hang")));
    long long elapsed = ms_since(start);
    canceler.join();
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == Errc::canceled);
    CHECK(contains(r.error().message(), where));
    CHECK(elapsed >= 80);
    CHECK(elapsed < 5000);
  }
  SUBCASE("a slow server completes when the deadline allows") {
    auto r = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(20)), get(server.url("/slow")));
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message()));
    CHECK(r->status == 204);
  }
  SUBCASE("a slow server past the deadline times out") {
    auto start = std::chrono::steady_clock::now();
    auto r = transport.Do(mi::Context::Background().WithTimeout(std::chrono::milliseconds(200)),
                          get(server.url("/slowbody")));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == Errc::timeout);
    CHECK(ms_since(start) < 5000);
  }
}

#if !defined(_WIN32)
#include <fcntl.h>

namespace {

// A raw listener on 127.0.0.1:0 for cases the test server cannot produce.
struct RawListener {
  int fd = -1;
  uint16_t port = 0;
  explicit RawListener(int backlog) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fd, backlog) == 0);
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
  }
  ~RawListener() { ::close(fd); }
};

}  // namespace

TEST_CASE("SocketTransport: a reset in the middle of the body is a network error") {
  RawListener listener(4);
  std::thread peer([&] {
    int c = ::accept(listener.fd, nullptr, nullptr);
    if (c < 0) return;
    char buf[4096];
    std::string got;
    while (got.find("\r\n\r\n") == std::string::npos) {
      long n = ::recv(c, buf, sizeof buf, 0);
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
    std::string partial = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"access_token\":";
    ::send(c, partial.data(), partial.size(), MSG_NOSIGNAL);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    linger hard{1, 0};  // close with RST
    ::setsockopt(c, SOL_SOCKET, SO_LINGER, &hard, sizeof hard);
    ::close(c);
  });
  SocketTransport transport;
  auto r = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(20)),
                        get("http://127.0.0.1:" + std::to_string(listener.port) + "/token"));
  peer.join();
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == Errc::network);
  CHECK(contains(r.error().message(), "127.0.0.1:" + std::to_string(listener.port)));
  CHECK_FALSE(contains(r.error().message(), "access_token"));
}

#if defined(__linux__)
TEST_CASE("SocketTransport: connect timeout and cancel while connecting") {
  // A listener that never accepts, with its queue filled: further SYNs are dropped,
  // so connecting hangs (loopback only).
  RawListener listener(0);
  std::vector<int> fillers;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(listener.port);
  for (int i = 0; i < 8; ++i) {
    int s = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    ::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    fillers.push_back(s);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::string url = "http://127.0.0.1:" + std::to_string(listener.port) + "/token";

  SUBCASE("the connect timeout") {
    SocketTransport transport(std::chrono::milliseconds(200));
    auto start = std::chrono::steady_clock::now();
    auto r = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(20)), get(url));
    long long elapsed = ms_since(start);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == Errc::timeout);
    CHECK(contains(r.error().message(), "connecting to 127.0.0.1:" + std::to_string(listener.port) +
                                            " timed out after 200 ms"));
    CHECK(elapsed >= 150);
    CHECK(elapsed < 5000);
  }
  SUBCASE("the context's deadline while connecting") {
    SocketTransport transport(std::chrono::seconds(30));
    auto r = transport.Do(mi::Context::Background().WithTimeout(std::chrono::milliseconds(200)), get(url));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == Errc::timeout);
    CHECK(contains(r.error().message(), "connecting to"));
  }
  SUBCASE("Cancel() while connecting") {
    SocketTransport transport(std::chrono::seconds(30));
    mi::Context ctx = mi::Context::Background().WithCancel();
    std::thread canceler([ctx] {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      ctx.Cancel();
    });
    auto start = std::chrono::steady_clock::now();
    auto r = transport.Do(ctx, get(url));
    long long elapsed = ms_since(start);
    canceler.join();
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == Errc::canceled);
    CHECK(elapsed < 5000);
  }
  for (int s : fillers) ::close(s);
}
#endif
#endif
