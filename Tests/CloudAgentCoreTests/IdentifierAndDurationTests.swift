import CloudAgentCore
import Foundation
import Testing

@Suite("Identifiers, durations, timestamps, secrets and tokens")
struct IdentifierAndDurationTests {
    // MARK: SessionID

    @Test("a session id is agent_<lower-case uuid> and round-trips")
    func sessionIdFormat() throws {
        let id = SessionID(uuid: try #require(UUID(uuidString: "3F2504E0-4F89-41D3-9A0C-0305E82C3301")))
        #expect(id.rawValue == "agent_3f2504e0-4f89-41d3-9a0c-0305e82c3301")
        #expect(id.description == id.rawValue)
        #expect(SessionID(rawValue: id.rawValue) == id)

        let random = SessionID()
        #expect(random.rawValue.wholeMatch(of: /agent_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/) != nil)
        #expect(SessionID(rawValue: random.rawValue) == random)

        let json = try JSONEncoder().encode(id)
        #expect(String(decoding: json, as: UTF8.self) == "\"agent_3f2504e0-4f89-41d3-9a0c-0305e82c3301\"")
        #expect(try JSONDecoder().decode(SessionID.self, from: json) == id)
    }

    @Test(
        "junk is not a session id",
        arguments: [
            "", "agent_", "agent_3F2504E0-4F89-41D3-9A0C-0305E82C3301", "session_3f2504e0-4f89-41d3-9a0c-0305e82c3301",
            "3f2504e0-4f89-41d3-9a0c-0305e82c3301", "agent_3f2504e0-4f89-41d3-9a0c-0305e82c3301x",
            " agent_3f2504e0-4f89-41d3-9a0c-0305e82c3301", "agent_3f2504e04f8941d39a0c0305e82c3301", "agent_not-a-uuid",
            "agent_../../etc/passwd",
        ]
    )
    func sessionIdRejectsJunk(raw: String) {
        #expect(SessionID(rawValue: raw) == nil)
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(SessionID.self, from: Data("\"\(raw)\"".utf8)) }
    }

    // MARK: ExecutionID

    @Test("execution ids made at increasing times sort in that order, whatever their random part")
    func executionIdsSortByCreationTime() {
        let offsets: [Int64] = [0, 1, 2, 999, 1_000, 60_000, hours(1), days(1), days(400), days(365 * 30)]
        var generator = SeededGenerator(seed: 42)
        let ids = offsets.map { ExecutionID(at: Fixture.at($0), using: &generator) }
        #expect(ids.sorted() == ids)
        #expect(Set(ids).count == ids.count)
        for (earlier, later) in zip(ids, ids.dropFirst()) {
            #expect(earlier < later)
            #expect(earlier.rawValue < later.rawValue)
        }
    }

    /// The creation time an execution id carries: its first 12 base-32 digits.
    static func timePart(of id: ExecutionID) -> Int64 {
        let alphabet = Array("0123456789abcdefghjkmnpqrstvwxyz")
        return id.rawValue.dropFirst(4).prefix(12).reduce(Int64(0)) { $0 * 32 + Int64(alphabet.firstIndex(of: $1)!) }
    }

    @Test("the time part of an execution id is the creation time in base-32 milliseconds")
    func executionIdTimePart() {
        var generator = SeededGenerator(seed: 7)
        #expect(ExecutionID(at: Date(timeIntervalSince1970: 0), using: &generator).rawValue.hasPrefix("exc_000000000000"))
        for offset in [0, 1, 31, 32, 999, hours(1), days(365)] {
            let date = Fixture.at(offset)
            #expect(Self.timePart(of: ExecutionID(at: date, using: &generator)) == date.millisecondsSince1970)
        }

        let first = ExecutionID(at: Fixture.t0, using: &generator)
        let second = ExecutionID(at: Fixture.t0, using: &generator)
        #expect(first.rawValue.prefix(16) == second.rawValue.prefix(16))
        #expect(first != second)
    }

    @Test("an execution id parses back and survives JSON")
    func executionIdParses() throws {
        var generator = SeededGenerator(seed: 1)
        let id = ExecutionID(at: Fixture.t0, using: &generator)
        #expect(id.rawValue.count == 26)
        #expect(id.rawValue.hasPrefix("exc_"))
        #expect(ExecutionID(rawValue: id.rawValue) == id)
        #expect(try JSONDecoder().decode(ExecutionID.self, from: JSONEncoder().encode(id)) == id)
        #expect(ExecutionID(at: Fixture.t0).rawValue.prefix(16) == id.rawValue.prefix(16))
    }

    @Test(
        "junk is not an execution id",
        arguments: [
            "", "exc_", "exc_" + zeros(21), "exc_" + zeros(23), "EXC_" + zeros(22), "exc_" + zeros(21) + "A",
            "exc_" + zeros(20) + "il", "exc_" + zeros(20) + "ou", "exe_" + zeros(22), zeros(22), "exc_" + zeros(20) + " 0",
        ]
    )
    func executionIdRejectsJunk(raw: String) {
        #expect(ExecutionID(rawValue: raw) == nil)
    }

    static func zeros(_ count: Int) -> String { String(repeating: "0", count: count) }

    // MARK: Durations

    @Test(
        "durations parse from ms, s, m, h and d",
        arguments: [
            ("250ms", 250), ("30s", 30_000), ("15m", 900_000), ("2h", 7_200_000), ("90d", 7_776_000_000),
            ("1ms", 1), ("90s", 90_000), (" 10s ", 10_000),
        ] as [(String, Int64)])
    func durationParses(text: String, milliseconds: Int64) throws {
        #expect(try DurationText.milliseconds(text) == milliseconds)
    }

    @Test(
        "zero, negative, fractional, unit-less and unknown durations are refused",
        arguments: [
            "", "0s", "-1s", "10", "1.5s", "5w", "ms", "s", "0ms", "+5s", "1e3s", "1 s", "15M", "٣s", "99999999999999999999d",
        ])
    func durationRejects(text: String) {
        let error = #expect(throws: DurationText.ParseError.self) { try DurationText.milliseconds(text) }
        #expect(error?.text == text)
        #expect(error?.description.contains("250ms") == true)
    }

    @Test(
        "a duration is written in its shortest exact unit and parses back",
        arguments: [
            (250, "250ms"), (30_000, "30s"), (900_000, "15m"), (7_200_000, "2h"), (7_776_000_000, "90d"),
            (90_000, "90s"), (1_500, "1500ms"), (61_000, "61s"), (5_400_000, "90m"),
        ] as [(Int64, String)])
    func durationFormatRoundTrips(milliseconds: Int64, text: String) throws {
        #expect(DurationText.format(milliseconds: milliseconds) == text)
        #expect(try DurationText.milliseconds(DurationText.format(milliseconds: milliseconds)) == milliseconds)
    }

    // MARK: Timestamps

    @Test("a timestamp is RFC 3339 in UTC with milliseconds")
    func timestampFormat() {
        let date = Date(millisecondsSince1970: 1_767_323_045_678)
        #expect(Timestamp.format(date) == "2026-01-02T03:04:05.678Z")
        #expect(Timestamp.format(Fixture.t0) == "2026-01-02T03:04:05.000Z")
    }

    @Test(
        "every millisecond survives format and parse",
        arguments: [0, 1, 4, 7, 10, 99, 100, 500, 678, 999] as [Int64]
    )
    func timestampRoundTrips(millisecond: Int64) throws {
        let date = Fixture.at(millisecond)
        let text = Timestamp.format(date)
        #expect(text.hasSuffix(String(format: ".%03ldZ", Int(millisecond))), "\(text)")
        let parsed = try #require(Timestamp.parse(text))
        #expect(parsed.millisecondsSince1970 == date.millisecondsSince1970)
    }

    @Test("timestamps parse with or without fractional seconds, and junk does not")
    func timestampParse() {
        #expect(Timestamp.parse("2026-01-02T03:04:05Z") == Fixture.t0)
        #expect(Timestamp.parse("2026-01-02T03:04:05.250Z")?.millisecondsSince1970 == Fixture.t0.millisecondsSince1970 + 250)
        #expect(Timestamp.parse("yesterday") == nil)
        #expect(Timestamp.parse("") == nil)
    }

    @Test(
        "a whole number of milliseconds survives Date(millisecondsSince1970:) in any year",
        arguments: [
            0, 32, 1_088_352_714_376, 1_767_323_045_000, 1_767_323_045_678, 2_000_000_000_123, 2_186_908_913_088,
            4_102_444_799_999,
        ] as [Int64]
    )
    func millisecondsRoundTrip(millis: Int64) {
        let date = Date(millisecondsSince1970: millis)
        #expect(date.millisecondsSince1970 == millis, "\(Timestamp.format(date))")
        #expect(date.adding(milliseconds: 0) == date)
        #expect(date.truncatedToMilliseconds == date)
    }

    @Test("dates hold whole milliseconds: adding and measuring are exact")
    func millisecondArithmetic() {
        let date = Date(millisecondsSince1970: 1_767_323_045_678)
        #expect(date.millisecondsSince1970 == 1_767_323_045_678)
        #expect(date.adding(milliseconds: 1).millisecondsSince1970 == 1_767_323_045_679)
        #expect(date.adding(milliseconds: minutes(15)).milliseconds(since: date) == minutes(15))
        #expect(date.milliseconds(since: date.adding(milliseconds: 5)) == -5)
        #expect(Date(timeIntervalSince1970: 1_767_323_045.678_9).truncatedToMilliseconds == date)
    }

    // MARK: Secrets and tokens

    static let key = Data((0..<32).map { UInt8($0) }).base64EncodedString()
    static let otherKey = Data((0..<32).map { UInt8(255 - $0) }).base64EncodedString()

    @Test("a sealed secret opens with its key, and only with its key")
    func secretBoxRoundTrip() throws {
        let box = try SecretBox(base64Key: Self.key)
        let plaintext = "sk-ant-api03-very-secret-value-0123456789"
        let sealed = box.seal(plaintext)
        #expect(try box.open(sealed) == plaintext)

        #expect(sealed.combined.range(of: Data(plaintext.utf8)) == nil)
        #expect(sealed.combined.range(of: Data("very-secret".utf8)) == nil)
        // A fresh nonce each time: the same plaintext never seals to the same bytes.
        #expect(box.seal(plaintext) != sealed)

        let other = try SecretBox(base64Key: Self.otherKey)
        #expect(throws: SecretBox.OpenError.self) { try other.open(sealed) }

        var tampered = sealed
        tampered.combined[tampered.combined.startIndex + 13] ^= 0x01
        #expect(throws: SecretBox.OpenError.self) { try box.open(tampered) }
        #expect(throws: SecretBox.OpenError.self) { try box.open(SealedValue(combined: Data([1, 2, 3]))) }
    }

    @Test("a sealed value is stored as base64 and decodes back")
    func sealedValueCodable() throws {
        let box = try SecretBox(base64Key: Self.key)
        let sealed = box.seal("hunter2")
        let json = try JSONEncoder().encode(sealed)
        #expect(try JSONDecoder().decode(String.self, from: json) == sealed.combined.base64EncodedString())
        #expect(try box.open(JSONDecoder().decode(SealedValue.self, from: json)) == "hunter2")
    }

    @Test(
        "a secret key must be base64 of 32 bytes", arguments: ["", "not base64!", Data(count: 16).base64EncodedString(), Data(count: 33).base64EncodedString()])
    func secretKeyIsChecked(key: String) {
        #expect(throws: SecretBox.KeyError.self) { try SecretBox(base64Key: key) }
    }

    @Test("a generated key is 256 bits and works")
    func generatedKey() throws {
        let key = SecretBox.generateBase64Key()
        #expect(Data(base64Encoded: key)?.count == 32)
        let box = try SecretBox(base64Key: key + "\n")
        #expect(try box.open(box.seal("x")) == "x")
    }

    @Test("a bearer token's hash is its stable SHA-256 in lower-case hex")
    func bearerTokenHash() {
        #expect(BearerToken.hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let token = BearerToken.generate()
        let hash = BearerToken.hash(token)
        #expect(hash.count == 64)
        #expect(hash.allSatisfy { "0123456789abcdef".contains($0) })
        #expect(BearerToken.hash(token) == hash)
        #expect(BearerToken.hash(token + "x") != hash)
    }

    @Test("generated bearer tokens are prefixed, URL-safe and distinct")
    func bearerTokenGenerate() {
        let first = BearerToken.generate()
        let second = BearerToken.generate()
        #expect(first.hasPrefix("cat_"))
        #expect(first != second)
        #expect(first.dropFirst(4).allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" })
        #expect(first.count == 4 + 43)
    }
}
