// The source table (kSources in sources.hpp) is consistent: every source has exactly one
// entry, and each entry has what its own fields require. A new source's entry that forgets
// half of a pair (a secret variable without its header, a refused ID kind without the
// reason) fails here rather than on the wire.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include <string>

using mi::Source;
using mi::detail::kSources;
using mi::detail::SourceSpec;
using mi::detail::TlsMode;

namespace {
const Source kAll[] = {Source::DefaultToIMDS, Source::AppService,    Source::AzureArc,        Source::CloudShell,
                       Source::ServiceFabric, Source::AzureML,       Source::WorkloadIdentity};
}

TEST_CASE("every source has exactly one entry, and source_spec finds it") {
  for (Source source : kAll) {
    int entries = 0;
    for (const SourceSpec& spec : kSources)
      if (spec.source == source) ++entries;
    CHECK_MESSAGE(entries == 1, mi::to_string(source));
    CHECK(mi::detail::source_spec(source).source == source);
  }
  CHECK(std::size(kSources) == std::size(kAll));
}

TEST_CASE("detection order: workload identity first, and only the last entry (IMDS) matches without a variable") {
  CHECK(kSources[0].source == Source::WorkloadIdentity);
  for (size_t i = 0; i + 1 < std::size(kSources); ++i)
    CHECK_MESSAGE(kSources[i].detect_variables.at[0] != nullptr, kSources[i].label);
  const SourceSpec& last = kSources[std::size(kSources) - 1];
  CHECK(last.source == Source::DefaultToIMDS);
  CHECK(last.detect_variables.at[0] == nullptr);
  const bool detected_otherwise = last.detect_also != nullptr;
  CHECK_FALSE(detected_otherwise);
}

TEST_CASE("each entry is complete") {
  for (const SourceSpec& spec : kSources) {
    INFO(spec.label);
    CHECK(spec.label != nullptr);
    CHECK(spec.method != nullptr);
    CHECK(spec.endpoint_variable != nullptr);
    CHECK(spec.scheme != nullptr);
    CHECK((spec.secret_variable == nullptr) == (spec.secret_header == nullptr));
    const bool refuses_a_kind = spec.client_id_parameter == nullptr || spec.object_id_parameter == nullptr ||
                                spec.resource_id_parameter == nullptr;
    CHECK(refuses_a_kind == (spec.id_refusal != nullptr));
    CHECK((spec.tls == TlsMode::pinned) == (spec.pin_variable != nullptr));
    CHECK((std::string(spec.scheme) == "https") == (spec.tls != TlsMode::plain));
    for (const mi::detail::Header& header : spec.headers) CHECK((header.name == nullptr) == (header.value == nullptr));
    CHECK((spec.setup == nullptr) == (spec.own_request == nullptr));
  }
}
