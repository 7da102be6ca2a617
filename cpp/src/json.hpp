// A small JSON reader for the artifact manifest (written by torchbridge's Python side).
// LibTorch ships no JSON library and the manifest is a few hundred bytes, so a strict
// recursive-descent reader keeps the runtime free of a third-party dependency.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace torchbridge::json {

class Value {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  Type type = Type::kNull;
  bool boolean = false;
  double number = 0.0;
  std::string string;
  std::vector<Value> array;
  std::map<std::string, Value> object;

  bool is_null() const { return type == Type::kNull; }
  bool has(const std::string& key) const { return type == Type::kObject && object.count(key) > 0; }
  // Typed accessors throw std::runtime_error naming `what` when the type differs.
  const Value& at(const std::string& key) const;
  const std::string& as_string(const std::string& what) const;
  double as_number(const std::string& what) const;
  bool as_bool(const std::string& what) const;
  const std::vector<Value>& as_array(const std::string& what) const;
};

/// The length of the well-formed UTF-8 sequence starting at text[i] (1 for ASCII), or 0 when the
/// bytes there are not one (a stray continuation byte, an overlong form, a surrogate, a cut).
size_t utf8_sequence_length(const std::string& text, size_t i);

/// Parses a complete JSON text; throws std::runtime_error with the offset of the first error.
Value parse(const std::string& text);

}  // namespace torchbridge::json
