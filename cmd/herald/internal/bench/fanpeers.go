package bench

import (
	"context"
	"errors"
)

func startCentrifugo(ctx context.Context, dir, bin string, progress func(string, ...any)) (fanTarget, error) {
	return nil, errors.New("TODO")
}

func startMercure(ctx context.Context, dir, bin string, progress func(string, ...any)) (fanTarget, error) {
	return nil, errors.New("TODO")
}
