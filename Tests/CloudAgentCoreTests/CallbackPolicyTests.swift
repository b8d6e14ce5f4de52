import CloudAgentCore
import Foundation
import Testing

@Suite("Callback retries and signatures")
struct CallbackPolicyTests {
    let now = Date(millisecondsSince1970: 1_760_000_000_000)

    @Test(
        "2xx is delivered; network errors, 429 and 5xx are retried; other answers are given up at once",
        arguments: [
            (200, "delivered"), (204, "delivered"), (nil, "retry"), (429, "retry"), (500, "retry"), (503, "retry"),
            (599, "retry"), (301, "giveUp"), (400, "giveUp"), (401, "giveUp"), (404, "giveUp"), (410, "giveUp"),
        ] as [(Int?, String)])
    func classification(status: Int?, expected: String) {
        let decision = CallbackRetryPolicy().decide(attempt: 1, status: status, now: now)
        switch decision {
        case .delivered: #expect(expected == "delivered")
        case .retry(let at): #expect(expected == "retry" && at == now.adding(milliseconds: 2000))
        case .giveUp: #expect(expected == "giveUp")
        }
    }

    @Test("waits double from the base, capped; the last attempt gives up")
    func backoff() {
        let policy = CallbackRetryPolicy(maxAttempts: 6, baseDelayMs: 2000, maxDelayMs: 300_000)
        #expect((1...5).map { policy.delayMs(afterAttempt: $0) } == [2000, 4000, 8000, 16_000, 32_000])
        #expect(policy.decide(attempt: 5, status: 500, now: now) == .retry(at: now.adding(milliseconds: 32_000)))
        #expect(policy.decide(attempt: 6, status: 500, now: now) == .giveUp)
        #expect(policy.decide(attempt: 6, status: 200, now: now) == .delivered)
        #expect(policy.delayMs(afterAttempt: 9) == 300_000)
        #expect(policy.delayMs(afterAttempt: 80) == 300_000)
        #expect(CallbackRetryPolicy(maxAttempts: 1).decide(attempt: 1, status: nil, now: now) == .giveUp)
    }

    @Test("the signature is HMAC-SHA256 of \"<timestamp>.<body>\" keyed with the key's UTF-8 bytes, in hex")
    func signature() {
        // The same value as Python's hmac.new(b"test-key", b'1700000000.{"a":1}', hashlib.sha256).hexdigest().
        #expect(
            CallbackSignature.sign(body: #"{"a":1}"#, timestamp: 1_700_000_000, key: "test-key")
                == "sha256=fe8e300d70576272b1c2ee86ca552aefaeaae9321a576f1f3a21b6eef608177e")
        let key = CallbackSignature.generateKey()
        #expect(key.count == 64)
        #expect(key != CallbackSignature.generateKey())
    }
}
