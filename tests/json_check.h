// A minimal strict JSON reader for tests (RFC 8259 syntax: objects, arrays, strings with
// escapes, numbers, true / false / null; no NaN, no trailing commas, nothing after the value).
// Independent of the writer it checks (worker/local/run_report.cc), so a malformed summary.json fails
// here rather than being read back by the code that wrote it.
#ifndef DION_TESTS_JSON_CHECK_H_
#define DION_TESTS_JSON_CHECK_H_

#include <cctype>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace dion::testing {

struct JsonValue {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject } type = Type::kNull;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<JsonValue> array;
  std::map<std::string, JsonValue> object;

  // The member `key` of an object, or nullptr.
  const JsonValue* Get(const std::string& key) const {
    auto it = object.find(key);
    return type == Type::kObject && it != object.end() ? &it->second : nullptr;
  }
};

class JsonReader {
 public:
  // The value of `text`, or nullopt (and `error` says where) if it is not exactly one JSON value.
  static std::optional<JsonValue> Parse(const std::string& text, std::string* error) {
    JsonReader reader(text);
    JsonValue value;
    if (!reader.Value(&value, 0)) {
      *error = "invalid JSON near offset " + std::to_string(reader.pos_);
      return std::nullopt;
    }
    reader.Space();
    if (reader.pos_ != text.size()) {
      *error = "trailing characters at offset " + std::to_string(reader.pos_);
      return std::nullopt;
    }
    return value;
  }

 private:
  explicit JsonReader(const std::string& text) : s_(text) {}

  void Space() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool Eat(char c) {
    Space();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool Literal(const char* word) {
    const std::string w(word);
    if (s_.compare(pos_, w.size(), w) != 0) return false;
    pos_ += w.size();
    return true;
  }
  bool String(std::string* out) {
    if (!Eat('"')) return false;
    while (pos_ < s_.size() && s_[pos_] != '"') {
      const char c = s_[pos_++];
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') {
        *out += c;
        continue;
      }
      if (pos_ >= s_.size()) return false;
      const char e = s_[pos_++];
      static const std::string kSimple = "\"\\/bfnrt", kValue = "\"\\/\b\f\n\r\t";
      if (const size_t k = kSimple.find(e); k != std::string::npos) {
        *out += kValue[k];
      } else if (e == 'u' && pos_ + 4 <= s_.size()) {
        for (int i = 0; i < 4; ++i) {
          if (!std::isxdigit(static_cast<unsigned char>(s_[pos_ + i]))) return false;
        }
        const long code = std::strtol(s_.substr(pos_, 4).c_str(), nullptr, 16);
        if (code < 0x80)
          *out += static_cast<char>(code);
        else
          *out += '?';
        pos_ += 4;
      } else {
        return false;
      }
    }
    return pos_ < s_.size() && s_[pos_++] == '"';
  }
  bool Number(double* out) {
    const size_t start = pos_;
    if (pos_ < s_.size() && s_[pos_] == '-') ++pos_;
    const auto digits = [&] {
      const size_t from = pos_;
      while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) ++pos_;
      return pos_ > from;
    };
    if (pos_ < s_.size() && s_[pos_] == '0') {
      ++pos_;
    } else if (!digits()) {
      return false;
    }
    if (pos_ < s_.size() && s_[pos_] == '.' && (++pos_, !digits())) return false;
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (!digits()) return false;
    }
    *out = std::strtod(s_.substr(start, pos_ - start).c_str(), nullptr);
    return true;
  }
  bool Value(JsonValue* v, int depth) {
    if (depth > 64) return false;
    Space();
    if (pos_ >= s_.size()) return false;
    const char c = s_[pos_];
    if (c == '{') {
      ++pos_;
      v->type = JsonValue::Type::kObject;
      if (Eat('}')) return true;
      do {
        std::string key;
        JsonValue member;
        if (!String(&key) || !Eat(':') || !Value(&member, depth + 1)) return false;
        if (v->object.count(key) != 0) return false;  // duplicate keys: a writer bug
        v->object[key] = std::move(member);
      } while (Eat(','));
      return Eat('}');
    }
    if (c == '[') {
      ++pos_;
      v->type = JsonValue::Type::kArray;
      if (Eat(']')) return true;
      do {
        v->array.emplace_back();
        if (!Value(&v->array.back(), depth + 1)) return false;
      } while (Eat(','));
      return Eat(']');
    }
    if (c == '"') {
      v->type = JsonValue::Type::kString;
      return String(&v->string);
    }
    if (Literal("true") || Literal("false")) {
      v->type = JsonValue::Type::kBool;
      v->boolean = s_[pos_ - 1] == 'e' && s_[pos_ - 2] == 'u';
      return true;
    }
    if (Literal("null")) return true;
    v->type = JsonValue::Type::kNumber;
    return Number(&v->number);
  }

  const std::string& s_;
  size_t pos_ = 0;
};

}  // namespace dion::testing

#endif  // DION_TESTS_JSON_CHECK_H_
