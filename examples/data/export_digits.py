"""How examples/data/digits.txt was made (run once; not needed at run time).

The data are scikit-learn's copy of the UCI ML hand-written digits test set
(1797 8x8 images, pixel values 0..16; UCI license CC BY 4.0). Needs
scikit-learn:  python export_digits.py > digits.txt
"""
from sklearn.datasets import load_digits

data = load_digits()
print("# 8x8 handwritten digits (UCI ML hand-written digits test set, as shipped by "
      "scikit-learn's load_digits)")
print("# 1797 samples, one per line: label, then 64 pixel values 0..16 row by row")
for pixels, label in zip(data.data.astype(int), data.target):
    print(int(label), " ".join(map(str, pixels)))
