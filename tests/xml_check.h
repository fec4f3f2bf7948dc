// A small well-formedness check of XML documents such as the SVG plots of `dion local`: every
// start tag is closed in order, attributes are quoted, '&' only starts the five predefined
// entities or a character reference, no text or tag after the root element. Not a full XML
// parser (no DTDs, CDATA or comments), which the documents checked here do not use.
#ifndef DION_TESTS_XML_CHECK_H_
#define DION_TESTS_XML_CHECK_H_

#include <cctype>
#include <string>
#include <vector>

namespace dion::testing {

// Returns true if `doc` is well-formed; otherwise `error` says what is wrong and where.
// `elements` (if set) receives the number of elements seen.
inline bool WellFormedXml(const std::string& doc, std::string* error, int* elements = nullptr) {
  std::vector<std::string> open;
  int count = 0;
  bool root_closed = false;
  size_t i = 0;
  const auto fail = [&](const std::string& what) {
    *error = what + " at offset " + std::to_string(i);
    return false;
  };
  const auto entity_ok = [&](size_t at) {
    const size_t semicolon = doc.find(';', at);
    if (semicolon == std::string::npos || semicolon - at > 8) return false;
    const std::string name = doc.substr(at + 1, semicolon - at - 1);
    if (name == "amp" || name == "lt" || name == "gt" || name == "quot" || name == "apos") {
      return true;
    }
    return name.size() > 1 && name[0] == '#';
  };
  while (i < doc.size()) {
    if (doc[i] != '<') {
      if (doc[i] == '&' && !entity_ok(i)) return fail("bare '&'");
      if (root_closed && !std::isspace(static_cast<unsigned char>(doc[i]))) {
        return fail("text after the root element");
      }
      ++i;
      continue;
    }
    if (doc.compare(i, 2, "<?") == 0) {  // XML declaration / processing instruction
      const size_t end = doc.find("?>", i);
      if (end == std::string::npos) return fail("unterminated <?");
      i = end + 2;
      continue;
    }
    const bool closing = i + 1 < doc.size() && doc[i + 1] == '/';
    size_t j = i + (closing ? 2 : 1);
    const size_t name_start = j;
    while (j < doc.size() && (std::isalnum(static_cast<unsigned char>(doc[j])) || doc[j] == '-' ||
                              doc[j] == ':' || doc[j] == '_')) {
      ++j;
    }
    const std::string name = doc.substr(name_start, j - name_start);
    if (name.empty()) return fail("tag without a name");
    // Attributes: name="value" pairs until '>' or '/>'.
    char quote = 0;
    while (j < doc.size() && (quote != 0 || (doc[j] != '>' && doc.compare(j, 2, "/>") != 0))) {
      if (quote == 0 && (doc[j] == '"' || doc[j] == '\'')) {
        if (doc[j - 1] != '=') return fail("quote not after '='");
        quote = doc[j];
      } else if (quote != 0 && doc[j] == quote) {
        quote = 0;
      } else if (quote != 0 && doc[j] == '<') {
        return fail("'<' inside an attribute value");
      } else if (quote != 0 && doc[j] == '&' && !entity_ok(j)) {
        return fail("bare '&' in an attribute value");
      } else if (quote == 0 && doc[j] == '=' &&
                 (j + 1 >= doc.size() || (doc[j + 1] != '"' && doc[j + 1] != '\''))) {
        return fail("unquoted attribute value");
      }
      ++j;
    }
    if (j >= doc.size()) return fail("unterminated tag <" + name);
    const bool self_closing = doc[j] == '/';
    i = j + (self_closing ? 2 : 1);
    if (closing) {
      if (open.empty() || open.back() != name) return fail("mismatched </" + name + ">");
      open.pop_back();
      if (open.empty()) root_closed = true;
      continue;
    }
    if (root_closed) return fail("a second root element <" + name + ">");
    ++count;
    if (!self_closing) open.push_back(name);
  }
  if (!open.empty()) return fail("unclosed <" + open.back() + ">");
  if (count == 0) return fail("no element");
  if (elements != nullptr) *elements = count;
  return true;
}

}  // namespace dion::testing

#endif  // DION_TESTS_XML_CHECK_H_
