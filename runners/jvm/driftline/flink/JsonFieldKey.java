/*
 * driftline: the Kafka message key of a job output's JSON record, in the JVM.
 *
 * Each output record that belongs to an event (a prediction, example, weight update, late
 * label, and a dead letter that names one) carries its "event_id": as the message key, a
 * downstream consumer gets every record of one event on one partition, in order (an example and
 * its correction, say). The field is read with Jackson's streaming parser, top level
 * only, stopping at it; a string is its UTF-8 bytes, an integer its decimal text. A record
 * without it (metrics, alerts, most dead letters), or one that is not a JSON object, has no key
 * (null: the producer's partitioner spreads those).
 */
package driftline.flink;

import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;

import java.nio.charset.StandardCharsets;

public final class JsonFieldKey implements SerializationSchema<String> {
  private static final long serialVersionUID = 1L;
  private static final JsonFactory JSON = new JsonFactory();
  private final String field;

  public JsonFieldKey(String field) {
    this.field = field;
  }

  @Override
  public byte[] serialize(String line) {
    if (line == null) {
      return null;
    }
    try (JsonParser p = JSON.createParser(line)) {
      if (p.nextToken() != JsonToken.START_OBJECT) {
        return null;
      }
      while (p.nextToken() == JsonToken.FIELD_NAME) {
        String name = p.currentName();
        JsonToken value = p.nextToken();
        if (field.equals(name)) {
          if (value == JsonToken.VALUE_STRING || value == JsonToken.VALUE_NUMBER_INT) {
            return p.getText().getBytes(StandardCharsets.UTF_8);
          }
          return null;
        }
        p.skipChildren();
      }
    } catch (java.io.IOException | RuntimeException e) {
      return null;
    }
    return null;
  }
}
