#include "server/checkpoint/text_cursor.h"

#include "absl/strings/ascii.h"

namespace dion {

void TextCursor::SkipSpace() {
  while (pos_ < text_.size() && space_.find(text_[pos_]) != absl::string_view::npos) ++pos_;
}

bool TextCursor::Consume(char c) {
  if (pos_ >= text_.size() || text_[pos_] != c) return false;
  ++pos_;
  return true;
}

bool TextCursor::Consume(absl::string_view literal) {
  if (text_.substr(pos_, literal.size()) != literal) return false;
  pos_ += literal.size();
  return true;
}

bool TextCursor::ConsumeToken(char c) {
  SkipSpace();
  return Consume(c);
}

bool TextCursor::ConsumeToken(absl::string_view literal) {
  SkipSpace();
  return Consume(literal);
}

absl::string_view TextCursor::ConsumeDigits() {
  const size_t start = pos_;
  while (pos_ < text_.size() && absl::ascii_isdigit(static_cast<unsigned char>(text_[pos_]))) {
    ++pos_;
  }
  return text_.substr(start, pos_ - start);
}

std::optional<absl::string_view> TextCursor::ConsumeRawQuoted(absl::string_view quotes) {
  if (pos_ >= text_.size() || quotes.find(text_[pos_]) == absl::string_view::npos) {
    return std::nullopt;
  }
  const size_t end = text_.find(text_[pos_], pos_ + 1);
  if (end == absl::string_view::npos) return std::nullopt;
  const absl::string_view body = text_.substr(pos_ + 1, end - pos_ - 1);
  if (body.find('\\') != absl::string_view::npos) return std::nullopt;
  pos_ = end + 1;
  return body;
}

}  // namespace dion
