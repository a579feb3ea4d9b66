/*
 * driftline: the time of a raw JSON record, for the watermark of a Kafka topic validated in the
 * stream (runners.flink_job.validated_kafka_sources). Flink needs a record's time at the source,
 * before the Python validation has looked at it; so this reads one top-level integer field with
 * Jackson's streaming parser, once per record (the SQL it replaces, a CASE over
 * TRY_CAST(JSON_VALUE(...)), parsed the whole record three times).
 *
 * It returns the field's value only when the validation could accept it as a time: a JSON
 * integer (not a float, string or boolean) within [min, max), the last one when the name
 * repeats (Python's json keeps the last), the record one well-formed JSON object. Anything else
 * is 0, which never moves the watermark: an invalid record cannot move it past valid ones by a
 * time out of bounds. A message's bytes that are not UTF-8 (which the validation refuses) are 0
 * too: they are decoded strictly first (Jackson would guess UTF-16 or 32 from the first bytes).
 */
package driftline.flink;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.table.functions.ScalarFunction;

import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;

public class JsonTime extends ScalarFunction {
  private static final JsonFactory JSON = new JsonFactory();
  private transient CharsetDecoder utf8;  // strict: malformed input is an error (an instance per task)

  public long eval(byte[] line, String field, long min, long max) {
    if (line == null) {
      return 0L;
    }
    if (utf8 == null) {
      utf8 = StandardCharsets.UTF_8.newDecoder()
          .onMalformedInput(CodingErrorAction.REPORT)
          .onUnmappableCharacter(CodingErrorAction.REPORT);
    }
    String text;
    try {
      text = utf8.decode(ByteBuffer.wrap(line)).toString();
    } catch (CharacterCodingException e) {
      return 0L;  // not UTF-8: the validation's invalid_utf8
    }
    return eval(text, field, min, max);
  }

  public long eval(String line, String field, long min, long max) {
    if (line == null) {
      return 0L;
    }
    long t = 0L;
    boolean integer = false;
    try (JsonParser p = JSON.createParser(line)) {
      if (p.nextToken() != JsonToken.START_OBJECT) {
        return 0L;
      }
      JsonToken token;
      while ((token = p.nextToken()) == JsonToken.FIELD_NAME) {
        String name = p.currentName();
        JsonToken value = p.nextToken();
        if (field.equals(name)) {
          integer = value == JsonToken.VALUE_NUMBER_INT
              && p.getNumberType() != JsonParser.NumberType.BIG_INTEGER;
          t = integer ? p.getLongValue() : 0L;
        } else {
          p.skipChildren();
        }
      }
      if (token != JsonToken.END_OBJECT || p.nextToken() != null) {
        return 0L;  // not one object: trailing text, or the input ended inside it
      }
    } catch (java.io.IOException | RuntimeException e) {
      return 0L;  // malformed JSON
    }
    return integer && t >= min && t < max ? t : 0L;
  }
}
