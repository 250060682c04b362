// The public API, compiled against the declarations only and linked
// with the compiled implementation (mi::managed_identity_impl). Nothing here
// touches mi::detail.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "managed_identity.hpp"

#include <thread>
#include <type_traits>

#include "test_support.hpp"

using namespace std::chrono_literals;

static_assert(std::is_copy_constructible<mi::ID>::value && std::is_copy_assignable<mi::ID>::value, "ID copyable");
static_assert(std::is_copy_constructible<mi::Client>::value, "Client copyable");
static_assert(std::is_copy_constructible<mi::Context>::value, "Context copyable");
static_assert(std::is_copy_constructible<mi::ClientOption>::value, "ClientOption copyable");
static_assert(std::is_copy_constructible<mi::AcquireTokenOption>::value, "AcquireTokenOption copyable");
static_assert(std::is_same<decltype(mi::GetSource()), mi::Source>::value, "GetSource");
static_assert(std::is_same<decltype(mi::to_string(mi::Source::AzureML)), std::string_view>::value, "to_string");

TEST_CASE("identities") {
  CHECK(mi::SystemAssigned().kind() == mi::IDKind::SystemAssigned);
  CHECK(mi::SystemAssigned().value().empty());
  CHECK(mi::UserAssignedClientID("c").kind() == mi::IDKind::ClientID);
  CHECK(mi::UserAssignedObjectID("o").kind() == mi::IDKind::ObjectID);
  mi::ID r = mi::UserAssignedResourceID("/subscriptions/x");
  CHECK(r.kind() == mi::IDKind::ResourceID);
  CHECK(r.value() == "/subscriptions/x");
  mi::ID copy = r;
  copy = mi::UserAssignedClientID("other");
  CHECK(copy.value() == "other");
  CHECK(r.value() == "/subscriptions/x");
}

TEST_CASE("source names") {
  CHECK(mi::to_string(mi::Source::DefaultToIMDS) == "DefaultToIMDS");
  CHECK(mi::to_string(mi::Source::AppService) == "AppService");
  CHECK(mi::to_string(mi::Source::AzureArc) == "AzureArc");
  CHECK(mi::to_string(mi::Source::CloudShell) == "CloudShell");
  CHECK(mi::to_string(mi::Source::ServiceFabric) == "ServiceFabric");
  CHECK(mi::to_string(mi::Source::AzureML) == "AzureML");
}

TEST_CASE("Result holds a value or an error") {
  mi::Result<int> ok = 5;
  CHECK(ok);
  CHECK(ok.ok());
  CHECK(*ok == 5);
  CHECK(ok.value() == 5);
  mi::Result<std::string> s = std::string("abc");
  CHECK(s->size() == 3);
  std::string moved = std::move(s).value();
  CHECK(moved == "abc");
  mi::Result<int> bad = mi::Error(mi::Errc::network, "boom");
  CHECK_FALSE(bad);
  CHECK(bad.error().code() == mi::Errc::network);
  CHECK(bad.error().message() == "boom");
  CHECK(bad.error().status_code() == 0);
  CHECK(bad.error().error_code().empty());
  mi::Result<int> copy = bad;
  CHECK(copy.error().message() == "boom");
  copy = ok;
  CHECK(*copy == 5);
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
  bool thrown = false;
  try {
    (void)bad.value();
  } catch (const mi::Exception& e) {
    thrown = e.error().code() == mi::Errc::network && std::string(e.what()) == "boom";
  }
  CHECK(thrown);
#endif
}

TEST_CASE("Context: deadlines, cancellation of descendants, Background never canceled") {
  mi::Context bg = mi::Context::Background();
  bg.Cancel();
  CHECK_FALSE(bg.canceled());
  CHECK(bg.deadline() == std::chrono::steady_clock::time_point::max());

  mi::Context parent = bg.WithCancel();
  mi::Context child = parent.WithTimeout(1h);
  mi::Context grandchild = child.WithCancel();
  CHECK_FALSE(grandchild.canceled());
  parent.Cancel();
  CHECK(child.canceled());
  CHECK(grandchild.canceled());
  CHECK_FALSE(bg.WithCancel().canceled());

  mi::Context sibling = bg.WithCancel();
  mi::Context leaf = sibling.WithCancel();
  leaf.Cancel();
  CHECK(leaf.canceled());
  CHECK_FALSE(sibling.canceled());  // cancel goes down, not up

  auto soon = std::chrono::steady_clock::now() + 50ms;
  mi::Context d = bg.WithDeadline(soon);
  CHECK(d.deadline() == soon);
  CHECK(d.WithTimeout(1h).deadline() == soon);  // a child never outlives its parent
  CHECK(d.WithTimeout(1h).WithCancel().deadline() == soon);
  mi::Context expired = bg.WithTimeout(0ms);
  CHECK(expired.expired());
  CHECK(bg.WithTimeout(std::chrono::milliseconds::max()).deadline() == std::chrono::steady_clock::time_point::max());
}

TEST_CASE("all the documented call forms compile and work with an injected transport") {
  support::CleanEnv env;
  auto http = std::make_shared<support::RecordingHttpClient>(
      [](const mi::HttpRequest&) { return support::response(200, support::imds_body("api-token")); });
  auto a = mi::New(mi::SystemAssigned());
  REQUIRE(a);
  auto b = mi::New(mi::UserAssignedClientID("api-client"), mi::WithRetryPolicyDisabled(), mi::WithHTTPClient(http));
  REQUIRE(b);
  auto c = mi::New(mi::UserAssignedObjectID("api-object"),
                   std::vector<mi::ClientOption>{mi::WithHTTPClient(http), mi::WithClientCapabilities({"cp1"}),
                                                 mi::WithLogger([](mi::LogLevel, std::string_view) {})});
  REQUIRE(c);
  CHECK(c->id().value() == "api-object");
  CHECK(c->source() == mi::Source::DefaultToIMDS);
  auto t1 = b->AcquireToken(mi::Context::Background(), "https://api-r");
  REQUIRE(t1);
  CHECK(t1->access_token == "api-token");
  auto t2 = b->AcquireToken(mi::Context::Background(), "https://api-r", mi::WithClaims("c"));
  REQUIRE(t2);
  auto t3 = b->AcquireToken(mi::Context::Background(), "https://api-r",
                            std::vector<mi::AcquireTokenOption>{mi::WithClaims("c")});
  REQUIRE(t3);
  CHECK(http->count() == 3);
  mi::Client copy = *b;
  CHECK(copy.AcquireToken(mi::Context::Background(), "https://api-r")->token_source == mi::TokenSource::Cache);
}

TEST_CASE("the documented forms of mi::Probe compile and work with an injected transport") {
  support::CleanEnv env;
  auto http = std::make_shared<support::RecordingHttpClient>(
      [](const mi::HttpRequest&) { return support::response(400, "{\"error\":\"invalid_request\"}"); });
  static_assert(std::is_same<decltype(mi::Probe(mi::Context::Background())), mi::Result<mi::Source>>::value, "Probe");
  mi::Context ctx = mi::Context::Background().WithCancel();
  ctx.Cancel();
  auto a = mi::Probe(ctx);  // canceled: no I/O, whatever the machine is
  REQUIRE_FALSE(a);
  CHECK(a.error().code() == mi::Errc::canceled);
  auto b = mi::Probe(mi::Context::Background(), mi::WithHTTPClient(http));
  REQUIRE(b);
  CHECK(*b == mi::Source::DefaultToIMDS);
  auto c = mi::Probe(mi::Context::Background(),
                     std::vector<mi::ClientOption>{mi::WithHTTPClient(http), mi::WithRetryPolicyDisabled()});
  REQUIRE(c);
  CHECK(http->count() == 2);
}

TEST_CASE("a custom transport can fail with mi::Error") {
  support::CleanEnv env;
  auto http = std::make_shared<support::RecordingHttpClient>(
      [](const mi::HttpRequest&) -> mi::Result<mi::HttpResponse> { return mi::Error(mi::Errc::tls, "custom failure"); });
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
  auto token = client->AcquireToken(mi::Context::Background(), "https://api-fail");
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::tls);
  CHECK(token.error().message().find("custom failure") != std::string::npos);
  CHECK(http->count() == 1);  // tls is not a transient failure
}

TEST_CASE("an empty user-assigned ID is invalid_argument at New") {
  support::CleanEnv env;
  for (auto id : {mi::UserAssignedClientID(""), mi::UserAssignedObjectID(""), mi::UserAssignedResourceID("")}) {
    auto client = mi::New(id);
    REQUIRE_FALSE(client);
    CHECK(client.error().code() == mi::Errc::invalid_argument);
  }
}
