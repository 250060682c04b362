// A shared library that tests/test_curl_loading.cpp is told to load as libcurl
// (MI_CURL_LIBRARY): with MI_FAKE_CURL_OLD a libcurl 7.74.0 (too old: no
// CURLOPT_PREREQFUNCTION) with nothing but curl_version_info; without, not libcurl at all.
#include <curl/curl.h>

#if defined(MI_FAKE_CURL_OLD)
extern "C" curl_version_info_data* curl_version_info(CURLversion) {
  static curl_version_info_data info = [] {
    curl_version_info_data d{};
    d.age = CURLVERSION_NOW;
    d.version = "7.74.0";
    d.version_num = 0x074a00;
    d.ssl_version = "OpenSSL/3.0.19";
    return d;
  }();
  return &info;
}
#else
extern "C" int mi_fake_libcurl_is_not_libcurl() { return 1; }
#endif
