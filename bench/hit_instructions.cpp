// Instructions per cached AcquireToken, counted by callgrind (bench/hit_instructions.sh):
// the one figure for the hit path that a shared, noisy machine does not disturb. The
// token comes from an injected transport (1600-character token, 28-character resource);
// argv[1] hits follow the one miss.
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include <cstdlib>
#include <memory>
#include <string>

namespace {
struct FixedEndpoint : mi::HttpClient {
  mi::Result<mi::HttpResponse> Do(const mi::Context&, const mi::HttpRequest&) override {
    mi::HttpResponse response;
    response.status = 200;
    response.body = "{\"access_token\":\"" + std::string(1600, 'a') +
                    "\",\"expires_in\":\"86400\",\"token_type\":\"Bearer\",\"resource\":\"https://management.azure.com\"}";
    return response;
  }
};
}  // namespace

int main(int argc, char** argv) {
  const long hits = argc > 1 ? std::atol(argv[1]) : 1000;
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(std::make_shared<FixedEndpoint>()));
  if (!client) return 1;
  size_t total = 0;
  for (long i = 0; i <= hits; ++i) {
    auto token = client->AcquireToken(mi::Context::Background(), "https://management.azure.com");
    if (!token) return 1;
    total += token->access_token.size();
  }
  return total == 0 ? 1 : 0;
}
