// Source detection (docs/protocol.md §1) and mi::New's identity checks per source (§2).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <string>
// The Arc agent's himds file: any expression convertible to std::string works.
std::string test_himds_path();
#define MI_AZURE_ARC_HIMDS_PATH test_himds_path()
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include <cstdio>
#include <fstream>

#include "test_support.hpp"

using support::CleanEnv;
using support::set_env;

std::string g_himds;
std::string test_himds_path() { return g_himds; }

namespace {
struct Himds {
  explicit Himds(bool present) {
    g_himds = std::string("mi-test-himds-") + std::to_string(reinterpret_cast<uintptr_t>(this));
    if (present) std::ofstream(g_himds) << "x";
  }
  ~Himds() {
    std::remove(g_himds.c_str());
    g_himds.clear();
  }
};
}  // namespace

TEST_CASE("detection: each source from its variables") {
  CleanEnv env;
  Himds himds(false);
  CHECK(mi::GetSource() == mi::Source::DefaultToIMDS);

  set_env("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token");
  CHECK(mi::GetSource() == mi::Source::DefaultToIMDS);  // IDENTITY_ENDPOINT alone
  set_env("IDENTITY_HEADER", "h");
  CHECK(mi::GetSource() == mi::Source::AppService);
  set_env("IDENTITY_SERVER_THUMBPRINT", "AB");
  CHECK(mi::GetSource() == mi::Source::ServiceFabric);
}

TEST_CASE("detection: MSI_ENDPOINT gives Azure ML with a secret, else Cloud Shell") {
  CleanEnv env;
  Himds himds(false);
  set_env("MSI_ENDPOINT", "http://127.0.0.1:1/token");
  CHECK(mi::GetSource() == mi::Source::CloudShell);
  set_env("MSI_SECRET", "s");
  CHECK(mi::GetSource() == mi::Source::AzureML);
}

TEST_CASE("detection: MSI_SECRET without MSI_ENDPOINT is IMDS") {
  CleanEnv env;
  Himds himds(false);
  set_env("MSI_SECRET", "s");
  CHECK(mi::GetSource() == mi::Source::DefaultToIMDS);
}

TEST_CASE("detection: Azure Arc from IDENTITY_ENDPOINT + IMDS_ENDPOINT, or the himds file") {
  CleanEnv env;
  {
    Himds himds(false);
    set_env("IDENTITY_ENDPOINT", "http://127.0.0.1:40342/metadata/identity/oauth2/token");
    set_env("IMDS_ENDPOINT", "http://127.0.0.1:40342");
    CHECK(mi::GetSource() == mi::Source::AzureArc);
    support::unset_env("IDENTITY_ENDPOINT");
    support::unset_env("IMDS_ENDPOINT");
    CHECK(mi::GetSource() == mi::Source::DefaultToIMDS);
  }
  {
    Himds himds(true);
    CHECK(mi::GetSource() == mi::Source::AzureArc);
  }
}

TEST_CASE("detection: precedence") {
  CleanEnv env;
  Himds himds(true);
  set_env("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token");
  set_env("IDENTITY_HEADER", "h");
  set_env("IMDS_ENDPOINT", "http://127.0.0.1:2");
  set_env("MSI_ENDPOINT", "http://127.0.0.1:3");
  CHECK(mi::GetSource() == mi::Source::AppService);  // App Service + IMDS_ENDPOINT is App Service
  support::unset_env("IDENTITY_HEADER");
  CHECK(mi::GetSource() == mi::Source::CloudShell);  // MSI_ENDPOINT beats Arc
  support::unset_env("MSI_ENDPOINT");
  CHECK(mi::GetSource() == mi::Source::AzureArc);
}

TEST_CASE("detection: empty variables count as unset") {
  CleanEnv env;
  Himds himds(false);
  set_env("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token");
  set_env("IDENTITY_HEADER", "");
  set_env("MSI_ENDPOINT", "");
  set_env("IMDS_ENDPOINT", "");
  CHECK(mi::GetSource() == mi::Source::DefaultToIMDS);
}

TEST_CASE("New keeps the source detected at New") {
  CleanEnv env;
  Himds himds(false);
  set_env("MSI_ENDPOINT", "http://127.0.0.1:1/token");
  auto client = mi::New(mi::SystemAssigned());
  REQUIRE(client);
  CHECK(client->source() == mi::Source::CloudShell);
  support::unset_env("MSI_ENDPOINT");
  CHECK(client->source() == mi::Source::CloudShell);
}

TEST_CASE("New: identity kinds each source refuses, checked before the empty value") {
  CleanEnv env;
  Himds himds(false);
  SUBCASE("Cloud Shell refuses every user-assigned kind") {
    set_env("MSI_ENDPOINT", "http://127.0.0.1:1/token");
    for (auto id : {mi::UserAssignedClientID("c"), mi::UserAssignedObjectID("o"), mi::UserAssignedResourceID("r"),
                    mi::UserAssignedClientID("")}) {
      auto client = mi::New(id);
      REQUIRE_FALSE(client);
      CHECK(client.error().code() == mi::Errc::unsupported_identity);
      CHECK(client.error().source() == mi::Source::CloudShell);
    }
    CHECK(mi::New(mi::SystemAssigned()));
  }
  SUBCASE("Azure ML takes a client ID only") {
    set_env("MSI_ENDPOINT", "http://127.0.0.1:1/token");
    set_env("MSI_SECRET", "s");
    CHECK(mi::New(mi::UserAssignedClientID("c")));
    CHECK(mi::New(mi::UserAssignedObjectID("o")).error().code() == mi::Errc::unsupported_identity);
    CHECK(mi::New(mi::UserAssignedResourceID("r")).error().code() == mi::Errc::unsupported_identity);
    CHECK(mi::New(mi::UserAssignedObjectID("")).error().code() == mi::Errc::unsupported_identity);
    CHECK(mi::New(mi::UserAssignedClientID("")).error().code() == mi::Errc::invalid_argument);
  }
  SUBCASE("Service Fabric refuses every user-assigned kind") {
    set_env("IDENTITY_ENDPOINT", "https://127.0.0.1:2377/metadata/identity/oauth2/token");
    set_env("IDENTITY_HEADER", "h");
    set_env("IDENTITY_SERVER_THUMBPRINT", "0123456789abcdef0123456789abcdef01234567");
    for (auto id : {mi::UserAssignedClientID("c"), mi::UserAssignedObjectID("o"), mi::UserAssignedResourceID("r")}) {
      auto client = mi::New(id);
      REQUIRE_FALSE(client);
      CHECK(client.error().code() == mi::Errc::unsupported_identity);
      CHECK(client.error().message().find("aka.ms/servicefabricmi") != std::string::npos);
    }
  }
  SUBCASE("IMDS, App Service and Arc take all three kinds") {
    for (int source = 0; source < 3; ++source) {
      CleanEnv inner;
      if (source == 1) {
        set_env("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token");
        set_env("IDENTITY_HEADER", "h");
      } else if (source == 2) {
        set_env("IDENTITY_ENDPOINT", "http://127.0.0.1:1/metadata/identity/oauth2/token");
        set_env("IMDS_ENDPOINT", "http://127.0.0.1:1");
      }
      for (auto id : {mi::UserAssignedClientID("c"), mi::UserAssignedObjectID("o"), mi::UserAssignedResourceID("r")})
        CHECK(mi::New(id));
      CHECK(mi::New(mi::UserAssignedResourceID("")).error().code() == mi::Errc::invalid_argument);
    }
  }
}
