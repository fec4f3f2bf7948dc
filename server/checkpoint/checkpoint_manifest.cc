#include "server/checkpoint/checkpoint_manifest.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/checkpoint/text_cursor.h"

namespace dion {
namespace {

constexpr absl::string_view kFormat = "dion-ps-checkpoint";
constexpr int kFormatVersion = 1;

// ---------------------------------------------------------------- JSON (manifest only)

void AppendJsonString(absl::string_view s, std::string* out) {
  out->push_back('"');
  for (char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out->push_back('\\');
      out->push_back(c);
    } else if (c == '\n') {
      out->append("\\n");
    } else if (u < 0x20 || u == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out->append("\\u00");
      out->push_back(kHex[u >> 4]);
      out->push_back(kHex[u & 15]);
    } else {
      out->push_back(c);
    }
  }
  out->push_back('"');
}

struct Json {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  std::string text;  // a string's value, or a number's literal
  std::vector<Json> items;
  // An object's members, in order: keys[i] names values[i]. Two vectors, because a pair
  // holding Json is not allowed while Json is incomplete (clang rejects it with libstdc++).
  std::vector<std::string> keys;
  std::vector<Json> values;

  const Json* Get(absl::string_view key) const {
    for (size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] == key) return &values[i];
    }
    return nullptr;
  }
};

// A strict RFC 8259 parser over a TextCursor, small because manifests are small; nesting
// limited to 32.
class JsonParser {
 public:
  explicit JsonParser(absl::string_view s) : in_(s, TextCursor::kJsonSpace) {}

  absl::Status ParseDocument(Json* out) {
    if (absl::Status status = Value(out, 0); !status.ok()) return status;
    in_.SkipSpace();
    return in_.AtEnd() ? absl::OkStatus() : Fail("trailing text after the JSON value");
  }

 private:
  absl::Status Fail(absl::string_view what) const {
    return absl::DataLossError(absl::StrCat("invalid JSON at byte ", in_.pos(), ": ", what));
  }

  absl::Status Value(Json* out, int depth) {
    if (depth > 32) return Fail("nested too deeply");
    in_.SkipSpace();
    if (in_.AtEnd()) return Fail("unexpected end");
    if (in_.Consume('{')) {
      out->kind = Json::Kind::kObject;
      if (in_.ConsumeToken('}')) return absl::OkStatus();
      do {
        in_.SkipSpace();
        std::string key;
        if (absl::Status s = String(&key); !s.ok()) return s;
        if (!in_.ConsumeToken(':')) return Fail("expected ':'");
        out->keys.push_back(std::move(key));
        out->values.emplace_back();
        if (absl::Status s = Value(&out->values.back(), depth + 1); !s.ok()) return s;
      } while (in_.ConsumeToken(','));
      return in_.ConsumeToken('}') ? absl::OkStatus() : Fail("expected ',' or '}'");
    }
    if (in_.Consume('[')) {
      out->kind = Json::Kind::kArray;
      if (in_.ConsumeToken(']')) return absl::OkStatus();
      do {
        out->items.emplace_back();
        if (absl::Status s = Value(&out->items.back(), depth + 1); !s.ok()) return s;
      } while (in_.ConsumeToken(','));
      return in_.ConsumeToken(']') ? absl::OkStatus() : Fail("expected ',' or ']'");
    }
    if (in_.Peek() == '"') {
      out->kind = Json::Kind::kString;
      return String(&out->text);
    }
    for (absl::string_view word : {"true", "false"}) {
      if (in_.Consume(word)) {
        out->kind = Json::Kind::kBool;
        out->text = std::string(word);
        return absl::OkStatus();
      }
    }
    if (in_.Consume("null")) return absl::OkStatus();
    out->kind = Json::Kind::kNumber;
    return Number(&out->text);
  }

  absl::Status Number(std::string* out) {
    const size_t start = in_.pos();
    in_.Consume('-');
    if (in_.ConsumeDigits().empty()) return Fail("expected a value");
    if (in_.Consume('.') && in_.ConsumeDigits().empty()) return Fail("bad number");
    if (in_.Consume('e') || in_.Consume('E')) {
      if (!in_.Consume('+')) in_.Consume('-');
      if (in_.ConsumeDigits().empty()) return Fail("bad number exponent");
    }
    *out = std::string(in_.text().substr(start, in_.pos() - start));
    return absl::OkStatus();
  }

  absl::Status Hex4(uint32_t* out) {
    if (in_.remaining() < 4) return Fail("truncated \\u escape");
    *out = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = in_.Next();
      const int v = absl::ascii_isdigit(h) ? h - '0'
                    : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                    : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
      if (v < 0) return Fail("bad hex digit in \\u escape");
      *out = *out << 4 | static_cast<uint32_t>(v);
    }
    return absl::OkStatus();
  }

  absl::Status String(std::string* out) {
    if (!in_.Consume('"')) return Fail("expected a string");
    while (true) {
      if (in_.AtEnd()) return Fail("unterminated string");
      const char c = in_.Next();
      if (c == '"') return absl::OkStatus();
      if (static_cast<unsigned char>(c) < 0x20) return Fail("raw control character in string");
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (in_.AtEnd()) return Fail("unterminated escape");
      const char e = in_.Next();
      switch (e) {
        case '"': case '\\': case '/': out->push_back(e); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          uint32_t cp = 0;
          if (absl::Status s = Hex4(&cp); !s.ok()) return s;
          if (cp >= 0xD800 && cp < 0xDC00) {  // high surrogate: a low one must follow
            uint32_t low = 0;
            if (!in_.Consume("\\u")) return Fail("unpaired surrogate");
            if (absl::Status s = Hex4(&low); !s.ok()) return s;
            if (low < 0xDC00 || low >= 0xE000) return Fail("unpaired surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            return Fail("unpaired surrogate");
          }
          AppendUtf8(cp, out);
          break;
        }
        default: return Fail("unknown escape");
      }
    }
  }

  static void AppendUtf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | cp >> 6));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | cp >> 12));
      out->push_back(static_cast<char>(0x80 | (cp >> 6 & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | cp >> 18));
      out->push_back(static_cast<char>(0x80 | (cp >> 12 & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp >> 6 & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  TextCursor in_;
};

}  // namespace

// ---------------------------------------------------------------- checksum and manifest

bool IsSafeManifestFileName(absl::string_view name) {
  if (name.empty() || name.size() > 255 || name[0] == '.') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
           c == '-' || c == '+';
  });
}

void Fnv1a64::Update(absl::string_view bytes) {
  uint64_t h = state_;
  for (char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  state_ = h;
}

uint64_t Fnv1a64::Of(absl::string_view bytes) {
  Fnv1a64 hash;
  hash.Update(bytes);
  return hash.digest();
}

std::string Fnv1a64::Hex(uint64_t digest) {
  return absl::StrCat(absl::Hex(digest, absl::kZeroPad16));
}

const ManifestFile* CheckpointManifest::Find(absl::string_view name) const {
  for (const ManifestFile& file : files) {
    if (file.name == name) return &file;
  }
  return nullptr;
}

std::string SerializeManifest(const CheckpointManifest& manifest) {
  std::string out = "{\n  \"format\": ";
  AppendJsonString(kFormat, &out);
  absl::StrAppend(&out, ",\n  \"format_version\": ", kFormatVersion,
                  ",\n  \"version\": ", manifest.version, ",\n  \"metadata\": {");
  const char* separator = "\n";
  for (const auto& [key, value] : manifest.metadata) {
    absl::StrAppend(&out, separator, "    ");
    AppendJsonString(key, &out);
    out.append(": ");
    AppendJsonString(value, &out);
    separator = ",\n";
  }
  out.append(manifest.metadata.empty() ? "},\n  \"files\": [" : "\n  },\n  \"files\": [");
  separator = "\n";
  for (const ManifestFile& file : manifest.files) {
    absl::StrAppend(&out, separator, "    {\"name\": ");
    AppendJsonString(file.name, &out);
    absl::StrAppend(&out, ", \"bytes\": ", file.bytes, ", \"fnv1a64\": \"",
                    Fnv1a64::Hex(file.fnv1a64), "\"}");
    separator = ",\n";
  }
  out.append(manifest.files.empty() ? "]\n}\n" : "\n  ]\n}\n");
  return out;
}

absl::StatusOr<CheckpointManifest> ParseManifest(absl::string_view json,
                                                 absl::string_view source) {
  const auto bad = [&](absl::string_view what) {
    return absl::DataLossError(absl::StrCat(source, ": ", what));
  };
  Json root;
  if (absl::Status status = JsonParser(json).ParseDocument(&root); !status.ok()) {
    return bad(status.message());
  }
  if (root.kind != Json::Kind::kObject) return bad("expected a JSON object");
  const Json* format = root.Get("format");
  if (format == nullptr || format->kind != Json::Kind::kString || format->text != kFormat) {
    return bad(absl::StrCat("expected \"format\": \"", kFormat, "\""));
  }
  const Json* format_version = root.Get("format_version");
  if (format_version == nullptr || format_version->text != absl::StrCat(kFormatVersion)) {
    return bad(absl::StrCat("expected \"format_version\": ", kFormatVersion));
  }
  CheckpointManifest manifest;
  const Json* version = root.Get("version");
  if (version == nullptr || version->kind != Json::Kind::kNumber ||
      !absl::SimpleAtoi(version->text, &manifest.version)) {
    return bad("expected \"version\": a non-negative integer");
  }
  const Json* metadata = root.Get("metadata");
  if (metadata == nullptr || metadata->kind != Json::Kind::kObject) {
    return bad("expected \"metadata\": an object");
  }
  for (size_t i = 0; i < metadata->keys.size(); ++i) {
    const std::string& key = metadata->keys[i];
    const Json& value = metadata->values[i];
    if (value.kind != Json::Kind::kString) {
      return bad(absl::StrCat("metadata \"", key, "\" is not a string"));
    }
    manifest.metadata[key] = value.text;
  }
  const Json* files = root.Get("files");
  if (files == nullptr || files->kind != Json::Kind::kArray) {
    return bad("expected \"files\": an array");
  }
  for (const Json& entry : files->items) {
    const Json* name = entry.Get("name");
    const Json* bytes = entry.Get("bytes");
    const Json* checksum = entry.Get("fnv1a64");
    ManifestFile file;
    if (name == nullptr || name->kind != Json::Kind::kString ||
        !IsSafeManifestFileName(name->text) || name->text == kManifestFileName) {
      return bad("a file entry lacks a safe \"name\" ([A-Za-z0-9._+-], no leading '.')");
    }
    file.name = name->text;
    if (manifest.Find(file.name) != nullptr) {
      return bad(absl::StrCat("file \"", file.name, "\" listed twice"));
    }
    if (bytes == nullptr || bytes->kind != Json::Kind::kNumber ||
        !absl::SimpleAtoi(bytes->text, &file.bytes) || file.bytes < 0) {
      return bad(absl::StrCat("file \"", file.name, "\": expected \"bytes\": an integer >= 0"));
    }
    if (checksum == nullptr || checksum->kind != Json::Kind::kString ||
        checksum->text.size() != 16 || !absl::SimpleHexAtoi(checksum->text, &file.fnv1a64)) {
      return bad(absl::StrCat("file \"", file.name, "\": expected \"fnv1a64\": 16 hex digits"));
    }
    manifest.files.push_back(std::move(file));
  }
  return manifest;
}

}  // namespace dion
