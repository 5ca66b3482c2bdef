package websub

// SubscriptionID is subscriptionID, for tests that look at Redis.
var SubscriptionID = subscriptionID

// Keys of the hub, for tests.
const SubsKey = subsKey

// RecordKey is recordKey, for tests.
var RecordKey = recordKey
