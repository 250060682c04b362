#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include <random>
#include <string>
#include <vector>

using mi::detail::JsonValue;
using mi::detail::kMaxJsonDepth;
using Type = JsonValue::Type;

namespace {

// The whole tree (no member filter), with the offset folded into `error` ("... at byte N").
bool parse_all(std::string_view text, JsonValue& out, std::string& error) {
  mi::detail::JsonStatus status = mi::detail::parse_json(text, nullptr, out);
  if (status) return true;
  error = std::string(status.error) + " at byte " + std::to_string(status.offset);
  return false;
}

bool ok(std::string_view text, JsonValue& out) {
  std::string error;
  bool parsed = parse_all(text, out, error);
  if (parsed) CHECK(error.empty());
  else CHECK(!error.empty());
  return parsed;
}
bool ok(std::string_view text) {
  JsonValue v;
  return ok(text, v);
}
JsonValue parsed(std::string_view text) {
  JsonValue v;
  std::string error;
  bool good = parse_all(text, v, error);
  INFO("error: " << error);
  REQUIRE(good);
  return v;
}
std::string error_of(std::string_view text) {
  JsonValue v;
  std::string error;
  CHECK_FALSE(parse_all(text, v, error));
  return error;
}
// The decoded value of the one string in `["..."]`.
std::string str(std::string_view body) {
  JsonValue v = parsed(body);
  REQUIRE(v.is_string());
  return v.text;
}

// Every JSON body in SAMPLES.md, verbatim.
const char* const kSampleBodies[] = {
    R"({"access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOi...","client_id":"9d3f2d6c-3c41-4d2f-9a66-4c3e5e1c9f10",
 "expires_in":"86399","expires_on":"1796241097","ext_expires_in":"86399","not_before":"1796154397",
 "resource":"https://management.azure.com/","token_type":"Bearer"})",
    R"({"access_token":"eyJ0eXAi...","expires_on":"1796241097","resource":"https://vault.azure.net",
 "token_type":"Bearer","client_id":"5E29463D-71DA-4FE0-8E69-999B57DB23B0"})",
    R"({"access_token":"eyJ0eXAi...","expires_on":"2026-12-02T19:51:37.0000000+00:00",
 "resource":"https://vault.azure.net","token_type":"Bearer","client_id":"5E29463D-..."})",
    R"({"access_token":"eyJ0eXAi...","expires_on":"12/2/2026 7:51:37 PM +00:00","resource":"https://vault.azure.net","token_type":"Bearer"})",
    R"({"access_token":"eyJ0eXAi...","expires_on":"12/02/2026 19:51:37 +00:00","resource":"https://vault.azure.net","token_type":"Bearer"})",
    R"({"access_token":"eyJ0eXAi...","refresh_token":"","expires_in":"3599","expires_on":"1796241097",
 "not_before":"1796237197","resource":"https://management.azure.com/","token_type":"Bearer"})",
    R"({"token_type":"Bearer","access_token":"eyJ0eXAi...","expires_on":1796241097,"resource":"https://vault.azure.net/"})",
    R"({"access_token":"eyJ0eXAi...","expires_in":86399,"refresh_in":43199,"token_type":"Bearer"})",
    R"({"error":"invalid_request","error_description":"Identity not found"})",
    R"({"error":"invalid_resource","error_description":"AADSTS500011: The resource principal named https://x was not found...","error_codes":[500011],"timestamp":"2026-11-28 10:00:00Z","trace_id":"...","correlation_id":"0b2c7a5e-..."})",
    R"({"error":{"correlationId":"7f30f4d3-0f3a-41e0-a417-527f21b3848f","code":"SecretHeaderNotFound","message":"Secret is not found in the request headers."}})",
    R"({"error":{"code":"BadRequest","message":"Invalid resource"}})",
};

// A document using every construct: all escapes, surrogate pairs, raw UTF-8, numbers, nesting.
const char kRich[] =
    "{\"s\":\"a\\\"b\\\\c\\/d\\be\\ff\\ng\\rh\\ti\\u0041\\u00e9\\u20ac\\ud83d\\ude00\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\","
    "\"n\":[0,-0,1.5,-2e10,3E+2,4e-3],\"b\":[true,false,null],\"o\":{\"k\":{\"deep\":[[],{}]}},\"e\":\"\"}";

}  // namespace

TEST_CASE("scalars of every type") {
  JsonValue v;
  REQUIRE(ok("null", v));
  CHECK(v.type == Type::Null);
  REQUIRE(ok("true", v));
  CHECK(v.type == Type::Bool);
  CHECK(v.boolean);
  REQUIRE(ok("false", v));
  CHECK(v.type == Type::Bool);
  CHECK_FALSE(v.boolean);
  REQUIRE(ok("42", v));
  CHECK(v.is_number());
  CHECK(v.text == "42");
  REQUIRE(ok("\"hello\"", v));
  CHECK(v.is_string());
  CHECK(v.text == "hello");
  REQUIRE(ok("\"\"", v));
  CHECK(v.is_string());
  CHECK(v.text.empty());
}

TEST_CASE("arrays and objects") {
  JsonValue v = parsed(" [ 1 , \"two\" , [ ] , { } , null ] ");
  REQUIRE(v.type == Type::Array);
  REQUIRE(v.items.size() == 5);
  CHECK(v.items[0].is_number());
  CHECK(v.items[1].text == "two");
  CHECK(v.items[2].type == Type::Array);
  CHECK(v.items[2].items.empty());
  CHECK(v.items[3].is_object());
  CHECK(v.items[3].members.empty());
  CHECK(v.items[4].type == Type::Null);

  v = parsed("{\"b\":1,\"a\":{\"x\":[true]},\"c\":\"z\"}");
  REQUIRE(v.is_object());
  REQUIRE(v.members.size() == 3);
  CHECK(v.members[0].first == "b");  // document order kept
  CHECK(v.members[1].first == "a");
  CHECK(v.members[2].first == "c");
  REQUIRE(v.find("a") != nullptr);
  REQUIRE(v.find("a")->find("x") != nullptr);
  CHECK(v.find("a")->find("x")->items.at(0).boolean);
  CHECK(v.find("c")->text == "z");
  CHECK(v.find("missing") == nullptr);
  CHECK(v.find("") == nullptr);
  CHECK(v.items.empty());

  // find() on anything but an object finds nothing.
  CHECK(parsed("[\"a\"]").find("a") == nullptr);
  CHECK(parsed("\"a\"").find("a") == nullptr);

  // Empty keys and keys with escapes.
  v = parsed("{\"\":1,\"k\\u0065y\":2}");
  REQUIRE(v.find("") != nullptr);
  CHECK(v.find("")->text == "1");
  REQUIRE(v.find("key") != nullptr);
  CHECK(v.find("key")->text == "2");
}

TEST_CASE("duplicate keys are all kept; find returns the first") {
  JsonValue v = parsed("{\"a\":1,\"b\":2,\"a\":3}");
  REQUIRE(v.members.size() == 3);
  CHECK(v.find("a")->text == "1");
  CHECK(v.members[2].first == "a");
  CHECK(v.members[2].second.text == "3");
}

TEST_CASE("whitespace around and inside the document") {
  CHECK(ok(" \t\r\n{ \t\r\n\"a\" \t\r\n: \t\r\n1 \t\r\n} \t\r\n"));
  CHECK(ok("\n[\n]\n"));
  CHECK_FALSE(ok("\f[]"));        // form feed is not JSON whitespace
  CHECK_FALSE(ok("[\v]"));        // nor vertical tab
  CHECK_FALSE(ok("[\xc2\xa0]"));  // nor NBSP
  CHECK_FALSE(ok("\xef\xbb\xbf{}"));  // a byte order mark is not part of the grammar
}

TEST_CASE("every escape") {
  CHECK(str(R"("\"")") == "\"");
  CHECK(str(R"("\\")") == "\\");
  CHECK(str(R"("\/")") == "/");
  CHECK(str(R"("\b")") == "\b");
  CHECK(str(R"("\f")") == "\f");
  CHECK(str(R"("\n")") == "\n");
  CHECK(str(R"("\r")") == "\r");
  CHECK(str(R"("\t")") == "\t");
  CHECK(str(R"("\u0041")") == "A");
  CHECK(str(R"("\u0000")") == std::string(1, '\0'));
  CHECK(str(R"("\u001f")") == "\x1f");
  CHECK(str(R"("\u007F")") == "\x7f");
  CHECK(str(R"("\u00e9")") == "\xc3\xa9");
  CHECK(str(R"("\u00E9")") == "\xc3\xa9");
  CHECK(str(R"("\u07ff")") == "\xdf\xbf");
  CHECK(str(R"("\u0800")") == "\xe0\xa0\x80");
  CHECK(str(R"("\u20AC")") == "\xe2\x82\xac");
  CHECK(str(R"("\uFFFF")") == "\xef\xbf\xbf");
  CHECK(str(R"("\uE000")") == "\xee\x80\x80");
  CHECK(str(R"("a\nb\tc")") == "a\nb\tc");
  CHECK(str(R"("pre \" mid \\ post")") == "pre \" mid \\ post");
  // Escapes mixed with raw UTF-8 on the slow path.
  CHECK(str("\"\xc3\xa9\\n\xe2\x82\xac\"") == "\xc3\xa9\n\xe2\x82\xac");

  // Anything else after a backslash is rejected.
  for (const char* bad : {R"("\a")", R"("\x41")", R"("\')", R"("\U0041")", R"("\0")", R"("\ ")", R"("\v")",
                          R"("\u12")", R"("\u12G4")", R"("\u")", R"("\uXYZW")", R"("\u-123")"}) {
    INFO(bad);
    CHECK_FALSE(ok(bad));
  }
}

TEST_CASE("surrogate pairs become 4-byte UTF-8; lone and reversed surrogates are rejected") {
  CHECK(str(R"("\ud83d\ude00")") == "\xf0\x9f\x98\x80");    // U+1F600
  CHECK(str(R"("\uD83D\uDE00")") == "\xf0\x9f\x98\x80");
  CHECK(str(R"("\ud800\udc00")") == "\xf0\x90\x80\x80");    // U+10000
  CHECK(str(R"("\udbff\udfff")") == "\xf4\x8f\xbf\xbf");    // U+10FFFF
  CHECK(str(R"("x\ud834\udd1ey")") == "x\xf0\x9d\x84\x9ey");  // U+1D11E
  CHECK(str(R"("\ud83d\ude00\ud83d\ude00")") == "\xf0\x9f\x98\x80\xf0\x9f\x98\x80");

  for (const char* bad : {
           R"("\ud800")",         // lone high
           R"("\udbff x")",       // high, then text
           R"("\udc00")",         // lone low
           R"("\udfff")",         // lone low
           R"("\ude00\ud83d")",   // reversed
           R"("\ud83d\ud83d")",   // high, high
           R"("\ud83d\u0041")",   // high, then a BMP escape
           R"("\ud83d\n")",       // high, then another escape
           R"("\ud83d\")",        // high, then a dangling backslash
           R"("\ud83d\u")",       // high, then a cut escape
           R"("\ud83d\udc")",     // high, then a short low
           R"("a\ud83dz")",       // high, then one character
       }) {
    INFO(bad);
    CHECK_FALSE(ok(bad));
  }
}

TEST_CASE("raw UTF-8 in strings is validated") {
  CHECK(str("\"\xc3\xa9\"") == "\xc3\xa9");                  // 2 bytes
  CHECK(str("\"\xe2\x82\xac\"") == "\xe2\x82\xac");          // 3 bytes
  CHECK(str("\"\xf0\x9f\x98\x80\"") == "\xf0\x9f\x98\x80");  // 4 bytes
  CHECK(str("\"\xc2\x80\"") == "\xc2\x80");                  // U+0080
  CHECK(str("\"\xe0\xa0\x80\"") == "\xe0\xa0\x80");          // U+0800
  CHECK(str("\"\xed\x9f\xbf\"") == "\xed\x9f\xbf");          // U+D7FF
  CHECK(str("\"\xee\x80\x80\"") == "\xee\x80\x80");          // U+E000
  CHECK(str("\"\xef\xbf\xbf\"") == "\xef\xbf\xbf");          // U+FFFF
  CHECK(str("\"\xf0\x90\x80\x80\"") == "\xf0\x90\x80\x80");  // U+10000
  CHECK(str("\"\xf4\x8f\xbf\xbf\"") == "\xf4\x8f\xbf\xbf");  // U+10FFFF
  CHECK(str("\"\x7f\"") == "\x7f");                          // DEL needs no escape

  const char* const bad[] = {
      "\x80",                  // lone continuation byte
      "\xbf",                  // lone continuation byte
      "\xc0\xaf",              // overlong '/'
      "\xc1\xbf",              // overlong
      "\xe0\x80\xaf",          // overlong
      "\xe0\x9f\xbf",          // overlong
      "\xf0\x80\x80\xaf",      // overlong
      "\xf0\x8f\xbf\xbf",      // overlong
      "\xed\xa0\x80",          // U+D800 encoded in UTF-8
      "\xed\xbf\xbf",          // U+DFFF encoded in UTF-8
      "\xed\xa0\xbd\xed\xb8\x80",  // CESU-8 surrogate pair
      "\xf4\x90\x80\x80",      // U+110000
      "\xf5\x80\x80\x80",      // lead byte above F4
      "\xf8\x88\x80\x80\x80",  // 5-byte form
      "\xfc\x84\x80\x80\x80\x80",  // 6-byte form
      "\xfe",
      "\xff",
      "\xc3",                  // truncated 2-byte
      "\xe2\x82",              // truncated 3-byte
      "\xf0\x9f\x98",          // truncated 4-byte
      "\xc3\x41",              // continuation missing
      "\xe2\x28\xa1",          // bad second byte
      "\xe2\x82\x28",          // bad third byte
      "\xf0\x9f\x28\x80",      // bad third byte
      "\xf0\x9f\x98\x28",      // bad fourth byte
  };
  for (const char* b : bad) {
    std::string seq(b);
    INFO("sequence of " << seq.size() << " bytes starting with " << int(static_cast<unsigned char>(seq[0])));
    CHECK_FALSE(ok("\"" + seq + "\""));
    CHECK_FALSE(ok("\"ab" + seq + "cd\""));
    CHECK_FALSE(ok("\"\\n" + seq + "\""));  // slow path (after an escape)
    CHECK_FALSE(ok("{\"" + seq + "\":1}"));  // in a key
    CHECK_FALSE(ok("\"" + seq));             // and at the end of input
  }
  // Non-ASCII outside strings is a syntax error.
  CHECK_FALSE(ok("[1,\xc3\xa9]"));
  CHECK_FALSE(ok("\xc3\xa9"));
}

TEST_CASE("unescaped control characters in strings are rejected") {
  for (int c = 0; c < 0x20; ++c) {
    INFO("control character " << c);
    std::string ch(1, static_cast<char>(c));
    CHECK_FALSE(ok("\"" + ch + "\""));
    CHECK_FALSE(ok("\"abc" + ch + "def\""));
    CHECK_FALSE(ok("\"\\t" + ch + "\""));   // slow path
    CHECK_FALSE(ok("{\"k" + ch + "\":1}"));  // in a key
  }
  // NUL inside a string_view is seen, not taken as the end of input.
  CHECK_FALSE(ok(std::string_view("\"a\0b\"", 5)));
  CHECK_FALSE(ok(std::string_view("[1]\0", 4)));
}

TEST_CASE("numbers are validated and kept as written") {
  for (const char* good : {"0", "-0", "1", "-1", "10", "1234567890", "0.5", "-0.0", "1.50", "1e5", "1E5", "1e+5",
                           "1E-05", "-1.25e-10", "123.456e789", "0e0", "-0.0e-0", "99999999999999999999999999",
                           "1796241097", "86399.999"}) {
    INFO(good);
    JsonValue v;
    REQUIRE(ok(good, v));
    CHECK(v.is_number());
    CHECK(v.text == good);
    // The same inside containers, followed by each kind of delimiter.
    JsonValue a = parsed(std::string("[") + good + "," + good + " ]");
    REQUIRE(a.items.size() == 2);
    CHECK(a.items[1].text == good);
    JsonValue o = parsed(std::string("{\"n\":") + good + "}");
    CHECK(o.find("n")->text == good);
  }
  for (const char* bad : {"01", "-01", "00", "1.", "-1.", ".1", "-.1", "-", "1e", "1E", "1e+", "1e-", "+1", "--1",
                          "1.e5", "0x10", "1f", "NaN", "-NaN", "Infinity", "-Infinity", "inf", "1..2", "1.2.3",
                          "1e5.5", "1ee5", "0.e1", "- 1", "1 2", "1,", "[01]", "[1.]", "[.5]", "[-]", "{\"a\":01}",
                          "{\"a\":1.}", "[+1]", "[1e]", "1_000", "١"}) {
    INFO(bad);
    CHECK_FALSE(ok(bad));
  }
}

TEST_CASE("literals are exact") {
  for (const char* bad : {"True", "FALSE", "Null", "nul", "nulll", "tru", "truee", "f", "n", "t", "nil", "undefined",
                          "[tru]", "[nulx]", "{\"a\":fals}"}) {
    INFO(bad);
    CHECK_FALSE(ok(bad));
  }
}

TEST_CASE("the grammar is strict") {
  const char* const bad[] = {
      "",            "   ",          "[1,]",          "[,1]",        "[1,,2]",     "{\"a\":1,}",
      "{,}",         "{\"a\"}",      "{\"a\":}",      "{\"a\" 1}",   "{\"a\":1 \"b\":2}", "[1 2]",
      "{a:1}",       "{'a':1}",      "['a']",         "'a'",         "[1]//c",     "/*c*/[1]",
      "[1,/*c*/2]",  "# c\n[1]",     "{\"a\":1}}",    "[1]]",        "[[1]",       "{\"a\":{}",
      "]",           "}",            ":",             ",",           "[}",         "{]",
      "{1:2}",       "{null:1}",     "{\"a\"::1}",    "\"a\"\"b\"",  "[] []",      "{}{}",
      "null,",       "1 x",          "{} x",          "\"abc",       "\"abc\\\"",  "[\"a\",]",
      "{\"a\":1,\"b\"}", "(1)",      "[1;2]",         "{\"a\"=1}",   "x",          "\\u0041",
  };
  for (const char* b : bad) {
    INFO(b);
    CHECK_FALSE(ok(b));
  }
}

TEST_CASE("nesting is limited to kMaxJsonDepth") {
  static_assert(kMaxJsonDepth == 64, "docs/protocol.md §9");
  auto arrays = [](int n) { return std::string(static_cast<size_t>(n), '[') + std::string(static_cast<size_t>(n), ']'); };
  auto objects = [](int n) {
    std::string s;
    for (int i = 0; i < n; ++i) s += "{\"a\":";
    s += "1";
    for (int i = 0; i < n; ++i) s += "}";
    return s;
  };
  auto mixed = [](int n) {
    std::string open, close;
    for (int i = 0; i < n; ++i) {
      if (i % 2) { open += "{\"k\":"; close = "}" + close; }
      else { open += "["; close = "]" + close; }
    }
    return open + "0" + close;
  };
  CHECK(ok(arrays(1)));
  CHECK(ok(arrays(63)));
  CHECK(ok(arrays(64)));
  CHECK_FALSE(ok(arrays(65)));
  CHECK(ok(objects(64)));
  CHECK_FALSE(ok(objects(65)));
  CHECK(ok(mixed(64)));
  CHECK_FALSE(ok(mixed(65)));

  JsonValue v = parsed(arrays(64));
  int depth = 0;
  for (const JsonValue* p = &v; p->type == Type::Array; p = p->items.empty() ? nullptr : &p->items[0]) {
    ++depth;
    if (p->items.empty()) break;
  }
  CHECK(depth == 64);

  std::string error = error_of(arrays(65));
  CHECK(error.find("deep") != std::string::npos);
  CHECK(error.find("at byte 64") != std::string::npos);

  // Hostile depth: no stack blow-up, just a rejection.
  CHECK_FALSE(ok(std::string(100000, '[')));
  CHECK_FALSE(ok(arrays(100000)));
  std::string objs;
  for (int i = 0; i < 100000; ++i) objs += "{\"a\":";
  CHECK_FALSE(ok(objs));
  // Width is not depth.
  std::string wide = "[";
  for (int i = 0; i < 10000; ++i) wide += (i ? ",[[1]]" : "[[1]]");
  wide += "]";
  CHECK(parsed(wide).items.size() == 10000);
}

TEST_CASE("every proper prefix of a valid document is rejected") {
  std::vector<std::string> docs(std::begin(kSampleBodies), std::end(kSampleBodies));
  docs.push_back(kRich);
  docs.push_back("[\"\\ud83d\\ude00\",-1.5e+3,true,false,null,{\"\":[]}]");
  for (const std::string& doc : docs) {
    REQUIRE(ok(doc));
    for (size_t n = 0; n < doc.size(); ++n) {
      INFO("prefix of " << n << " bytes of a " << doc.size() << "-byte document");
      JsonValue v;
      std::string error;
      CHECK_FALSE(parse_all(std::string_view(doc.data(), n), v, error));
      CHECK(!error.empty());
    }
  }
  // Scalars that stop early.
  for (const char* bad : {"tr", "fals", "nu", "\"ab", "\"a\\", "\"\\u00", "-", "1.", "1e", "1e+"}) {
    INFO(bad);
    CHECK_FALSE(ok(bad));
  }
}

TEST_CASE("a rich document decodes exactly") {
  JsonValue v = parsed(kRich);
  REQUIRE(v.find("s") != nullptr);
  CHECK(v.find("s")->text ==
        "a\"b\\c/d\be\ff\ng\rh\ti"
        "A\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
  const JsonValue* n = v.find("n");
  REQUIRE(n != nullptr);
  REQUIRE(n->items.size() == 6);
  CHECK(n->items[0].text == "0");
  CHECK(n->items[1].text == "-0");
  CHECK(n->items[2].text == "1.5");
  CHECK(n->items[3].text == "-2e10");
  CHECK(n->items[4].text == "3E+2");
  CHECK(n->items[5].text == "4e-3");
  const JsonValue* b = v.find("b");
  REQUIRE(b != nullptr);
  CHECK(b->items.at(0).boolean);
  CHECK_FALSE(b->items.at(1).boolean);
  CHECK(b->items.at(2).type == Type::Null);
  CHECK(v.find("o")->find("k")->find("deep")->items.size() == 2);
  CHECK(v.find("e")->is_string());
  CHECK(v.find("e")->text.empty());
}

TEST_CASE("every SAMPLES.md body parses") {
  for (const char* body : kSampleBodies) {
    INFO(body);
    JsonValue v = parsed(body);
    CHECK(v.is_object());
    CHECK(!v.members.empty());
  }
  JsonValue imds = parsed(kSampleBodies[0]);
  CHECK(imds.find("expires_on")->is_string());
  CHECK(imds.find("expires_on")->text == "1796241097");
  CHECK(imds.find("resource")->text == "https://management.azure.com/");
  JsonValue sf = parsed(kSampleBodies[6]);
  CHECK(sf.find("expires_on")->is_number());
  CHECK(sf.find("expires_on")->text == "1796241097");
  JsonValue nested = parsed(kSampleBodies[10]);
  CHECK(nested.find("error")->find("code")->text == "SecretHeaderNotFound");
  JsonValue flat = parsed(kSampleBodies[9]);
  CHECK(flat.find("error_codes")->items.at(0).text == "500011");
}

TEST_CASE("error messages give an offset and never quote the input") {
  const std::string secret = "SECRETtokenVALUE";
  const std::string bad[] = {
      "{\"access_token\":\"" + secret + "\",}",
      "{\"access_token\":\"" + secret + "\" \"x\":1}",
      "{\"access_token\":\"" + secret + "\"",
      "{\"access_token\":\"" + secret,
      "{\"access_token\":\"" + secret + "\\q\"}",
      "{\"access_token\":\"" + secret + "\\ud800\"}",
      "{\"access_token\":\"" + secret + "\xff\"}",
      "{\"access_token\":\"" + secret + "\x01\"}",
      "{\"access_token\":" + secret + "}",
      "{\"" + secret + "\" 1}",
      "[\"" + secret + "\"] trailing " + secret,
      "{\"access_token\":\"" + secret + "\",\"expires_in\":01}",
      "{\"access_token\":\"" + secret + "\",\"n\":" + std::string(70, '[') + "}",
  };
  for (const std::string& b : bad) {
    std::string error = error_of(b);
    INFO(error);
    CHECK(error.find("SECRET") == std::string::npos);
    CHECK(error.find("token") == std::string::npos);
    CHECK(error.find("VALUE") == std::string::npos);
    CHECK(error.find("at byte ") != std::string::npos);
    CHECK(error.size() < 100);
  }
  // Offsets point at the offending byte.
  CHECK(error_of("[1,]").find("at byte 3") != std::string::npos);
  CHECK(error_of("  x").find("at byte 2") != std::string::npos);
  CHECK(error_of("{\"a\":1} 2").find("at byte 8") != std::string::npos);
  CHECK(error_of("[01]").find("at byte 2") != std::string::npos);
  CHECK(error_of("\"ab\x01\"").find("at byte 3") != std::string::npos);
  CHECK(error_of("[").find("at byte 1") != std::string::npos);
  CHECK(error_of("").find("at byte 0") != std::string::npos);

  // The parser's status gives message and offset separately.
  JsonValue v;
  mi::detail::JsonStatus status = mi::detail::parse_json("[true,]", nullptr, v);
  CHECK_FALSE(status);
  CHECK(status.offset == 6);
  REQUIRE(status.error != nullptr);
  const std::string message = status.error;
  CHECK(message.find("at byte") == std::string::npos);
  CHECK(!message.empty());
}

TEST_CASE("a value is reset between parses") {
  JsonValue v = parsed("{\"a\":[1,2,3],\"b\":\"x\"}");
  REQUIRE(ok("7", v));
  CHECK(v.is_number());
  CHECK(v.members.empty());
  CHECK(v.items.empty());
  CHECK(v.text == "7");
}

TEST_CASE("large and long inputs") {
  // A 2 KB token response (the common case) parses, many times over.
  std::string token(2000, 'A');
  for (size_t i = 0; i < token.size(); i += 7) token[i] = static_cast<char>('a' + i % 26);
  std::string body = "{\"access_token\":\"" + token +
                     "\",\"client_id\":\"9d3f2d6c-3c41-4d2f-9a66-4c3e5e1c9f10\",\"expires_in\":\"86399\","
                     "\"expires_on\":\"1796241097\",\"ext_expires_in\":\"86399\",\"not_before\":\"1796154397\","
                     "\"resource\":\"https://management.azure.com/\",\"token_type\":\"Bearer\"}";
  for (int i = 0; i < 2000; ++i) {
    JsonValue v;
    std::string error;
    REQUIRE(parse_all(body, v, error));
    REQUIRE(v.members.size() == 8);
    REQUIRE(v.members[0].second.text.size() == 2000);
  }
  // A 1 MiB string and a long array.
  std::string big = "\"" + std::string(1 << 20, 'x') + "\"";
  CHECK(parsed(big).text.size() == (1u << 20));
  std::string many = "[";
  for (int i = 0; i < 100000; ++i) many += i ? ",1" : "1";
  many += "]";
  CHECK(parsed(many).items.size() == 100000);
}

TEST_CASE("mutated documents never crash the parser") {
  std::vector<std::string> seeds(std::begin(kSampleBodies), std::end(kSampleBodies));
  seeds.push_back(kRich);
  std::mt19937 rng(12345);
  const char alphabet[] = "{}[]\":,\\u0123456789abcdefABCDEF.eE+-tfn \t\r\n\x00\x01\x7f\x80\xbf\xc3\xe2\xed\xf0\xf4\xff";
  int accepted = 0;
  for (int round = 0; round < 20000; ++round) {
    std::string doc = seeds[static_cast<size_t>(round) % seeds.size()];
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !doc.empty(); ++e) {
      size_t pos = rng() % doc.size();
      char c = alphabet[rng() % (sizeof(alphabet) - 1)];
      switch (rng() % 3) {
        case 0: doc[pos] = c; break;
        case 1: doc.insert(pos, 1, c); break;
        default: doc.erase(pos, 1); break;
      }
    }
    JsonValue v;
    std::string error;
    if (parse_all(doc, v, error)) ++accepted;
    else REQUIRE(error.find("at byte ") != std::string::npos);
  }
  CHECK(accepted > 0);
}
