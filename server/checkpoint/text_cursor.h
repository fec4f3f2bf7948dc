// A read position in a text, shared by the hand-written parsers of the checkpoint's text
// formats (the .npy header dict in npy.cc, manifest.json in checkpoint_manifest.cc). It knows
// no grammar: each parser owns its syntax and its error messages, which cite pos().
//
// Every Consume* either moves past what it matched or, when the text does not continue with
// it, returns false / empty / nullopt and leaves the position where it was.
//
// Thread-safety: a plain value viewing a string it does not own (which must outlive it); one
// thread at a time.
#ifndef DION_SERVER_CHECKPOINT_TEXT_CURSOR_H_
#define DION_SERVER_CHECKPOINT_TEXT_CURSOR_H_

#include <cstddef>
#include <optional>

#include "absl/strings/string_view.h"

namespace dion {

class TextCursor {
 public:
  // What SkipSpace skips: Python's (and C's isspace) whitespace, or JSON's (RFC 8259).
  static constexpr absl::string_view kAsciiSpace = " \t\n\v\f\r";
  static constexpr absl::string_view kJsonSpace = " \t\n\r";

  explicit TextCursor(absl::string_view text, absl::string_view space = kAsciiSpace)
      : text_(text), space_(space) {}

  absl::string_view text() const { return text_; }
  size_t pos() const { return pos_; }            // bytes consumed so far
  size_t remaining() const { return text_.size() - pos_; }
  bool AtEnd() const { return pos_ == text_.size(); }
  char Peek() const { return text_[pos_]; }      // REQUIRES: !AtEnd()
  char Next() { return text_[pos_++]; }          // REQUIRES: !AtEnd()

  // Moves past every whitespace character (see the constructor) from here.
  void SkipSpace();
  // `c` or `literal` exactly, from here.
  bool Consume(char c);
  bool Consume(absl::string_view literal);
  // SkipSpace, then Consume: one token of a whitespace-separated syntax. After a false result
  // the whitespace stays skipped.
  bool ConsumeToken(char c);
  bool ConsumeToken(absl::string_view literal);
  // The longest run of ASCII digits from here, possibly empty.
  absl::string_view ConsumeDigits();
  // A string from here between two equal quote characters (any of `quotes`) with no backslash
  // inside, as in Python literals that need no escapes; returns what is between the quotes.
  std::optional<absl::string_view> ConsumeRawQuoted(absl::string_view quotes);

 private:
  absl::string_view text_;
  absl::string_view space_;
  size_t pos_ = 0;
};

}  // namespace dion

#endif  // DION_SERVER_CHECKPOINT_TEXT_CURSOR_H_
