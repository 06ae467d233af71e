// kafkajs (npm) against the Kafka listener, one action per run, printing one JSON object:
//
//   produce: COUNT records to TOPIC with each codec of CODECS, keys "<codec>-<n>", values
//            "<codec> record <n>", a header "codec"; prints {"error": Kafka error type|null}.
//   consume: reads TOPIC in group GROUP until it has COUNT records (or TIMEOUT seconds), with
//            kafkajs' commits after each batch, then leaves; prints {"records": [[key, value]]}.
//
// Usage: node kafka_client.js ACTION '{"bootstrap": ..., "mechanism": ..., "user": ..., ...}'
// kafkajs compresses gzip itself; snappy, lz4 and zstd are codecs it is given, here pure-JS
// ones (kafkajs-snappy, lz4js, zstd-codec), since the native ones do not build on Node 20.
'use strict';

const { Kafka, CompressionTypes, CompressionCodecs, logLevel } = require('kafkajs');
const { errorCodes } = require('kafkajs/src/protocol/error');
const SnappyCodec = require('kafkajs-snappy');
const lz4 = require('lz4js');
const { ZstdCodec } = require('zstd-codec');

CompressionCodecs[CompressionTypes.Snappy] = SnappyCodec;
CompressionCodecs[CompressionTypes.LZ4] = () => ({
  async compress(encoder) {
    return Buffer.from(lz4.compress(encoder.buffer));
  },
  async decompress(buffer) {
    return Buffer.from(lz4.decompress(buffer));
  },
});
const zstd = new Promise((resolve) => ZstdCodec.run((codec) => resolve(new codec.Simple())));
CompressionCodecs[CompressionTypes.ZSTD] = () => ({
  async compress(encoder) {
    return Buffer.from((await zstd).compress(encoder.buffer));
  },
  async decompress(buffer) {
    return Buffer.from((await zstd).decompress(buffer));
  },
});

const CODECS = {
  none: CompressionTypes.None,
  gzip: CompressionTypes.GZIP,
  snappy: CompressionTypes.Snappy,
  lz4: CompressionTypes.LZ4,
  zstd: CompressionTypes.ZSTD,
};

function client(options) {
  return new Kafka({
    clientId: 'appliance-e2e',
    brokers: [options.bootstrap],
    sasl: {
      mechanism: options.mechanism.toLowerCase(),
      username: options.user,
      password: options.password,
    },
    retry: { retries: 2 },
    logLevel: logLevel.NOTHING,
  });
}

async function produce(options) {
  const producer = client(options).producer({ allowAutoTopicCreation: false });
  await producer.connect();
  try {
    for (const codec of options.codecs) {
      const messages = [];
      for (let n = 0; n < options.count; n += 1) {
        messages.push({
          key: `${codec}-${n}`,
          value: `${codec} record ${n}`,
          headers: { codec },
        });
      }
      await producer.send({ topic: options.topic, acks: -1, compression: CODECS[codec], messages });
    }
    return { error: null };
  } catch (error) {
    // A protocol error reaches the caller wrapped by kafkajs' retrier, which keeps only its
    // message: find the code whose message it is.
    const protocolError = Object.values(errorCodes).find((code) => code.message === error.message);
    return { error: error.type || (protocolError && protocolError.type) || error.name, message: error.message };
  } finally {
    await producer.disconnect();
  }
}

async function consume(options) {
  const consumer = client(options).consumer({ groupId: options.group });
  const records = [];
  await consumer.connect();
  await consumer.subscribe({ topics: [options.topic], fromBeginning: true });
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, (options.timeout || 60) * 1000);
    consumer.run({
      eachMessage: async ({ message }) => {
        records.push([message.key.toString(), message.value.toString()]);
        if (records.length >= options.count) {
          clearTimeout(timer);
          resolve();
        }
      },
    });
  });
  await consumer.disconnect();
  return { records };
}

async function main() {
  const [action, json] = process.argv.slice(2);
  const options = JSON.parse(json);
  const answer = await { produce, consume }[action](options);
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
