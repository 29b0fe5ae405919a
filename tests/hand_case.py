"""The hand-made predictions shared by the metrics and report tests."""

import numpy as np

CLASSES = ["human", "gen_a", "gen_b"]

# Six hand-made images. Columns: P(human), P(gen_a), P(gen_b).
#   0 human -> argmax human; P(generated) 0.2  -> judged human      (both right)
#   1 human -> argmax human; P(generated) 0.6  -> judged generated  (attribution right, detection wrong)
#   2 gen_a -> argmax gen_a; P(generated) 0.9  -> generated         (both right)
#   3 gen_a -> argmax gen_b; P(generated) 0.8  -> generated         (attribution wrong, detection right)
#   4 gen_b -> argmax human; P(generated) 0.4  -> judged human      (both wrong)
#   5 gen_b -> argmax gen_b; P(generated) 0.95 -> generated         (both right)
HAND_LABELS = [0, 0, 1, 1, 2, 2]
HAND_PROBS = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.4, 0.3, 0.3],
        [0.1, 0.7, 0.2],
        [0.2, 0.2, 0.6],
        [0.6, 0.1, 0.3],
        [0.05, 0.15, 0.8],
    ]
)
