// What mi-token prints: the token in the form asked for, and errors (never with the token).
#pragma once

#include <string>
#include <string_view>

#include "managed_identity.hpp"
#include "options.hpp"

namespace mitoken {

std::string json_string(std::string_view text);

// Writes one acquisition to stdout in `form` and flushes.
void print_token(const mi::AuthResult& token, mi::Source source, OutputForm form);

// The error as printed on stderr: message, code, status, correlation id (never a token).
std::string format_error(const mi::Error& error);

// format_error() on stderr; returns the exit status.
int print_error(const mi::Error& error);

// Which exit status an error maps to (see Exit).
int exit_status(const mi::Error& error);

}  // namespace mitoken
